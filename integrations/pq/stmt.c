/* The per-connection cache of prepared statements: a hash of SQL text
 * with a most-recently-used list, so that the least recently used one can
 * be DEALLOCATEd to make room (conn.c sends the DEALLOCATE). It only keeps
 * the books; it sends nothing and calls nothing else of the wing.
 *
 * Lifetimes. An entry is held by the cache (in the hash and on the lru:
 * `cached`) and by every BT__PQ_OP_PREPARE in the connection's FIFO that
 * points at it (`refs`). Forgetting an entry takes it out of the cache;
 * the memory goes when the last of the two lets go. So the server may
 * drop every statement (DISCARD ALL: conn.c forgets them) while a PREPARE
 * sent after that is still on its way, and its answer finds its entry.
 *
 * Numbers. Entries are numbered in the order their PREPAREs are sent (the
 * name is "bt_<number>"), so "every statement prepared before this query
 * was sent" is "every number up to the one current when it was sent". */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "pq-internal.h"

static uint32_t stmt_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static bt__pq_stmt *stmt_find(bt_pq_conn *c, const char *sql, uint32_t h)
{
    if (c->nbuckets == 0)
        return NULL;
    for (bt__pq_stmt *s = c->stmts[h % c->nbuckets]; s != NULL; s = s->next)
        if (s->hash == h && strcmp(s->sql, sql) == 0)
            return s;
    return NULL;
}

/* An entry for sql, hashed, with a new number and name, not on the lru: a
 * new one, or old (the least recently used entry, already out of the hash)
 * made over. NULL when out of memory; old is then left an empty entry, not
 * ready and out of the hash, that only bt__pq_stmt_clear frees. */
static bt__pq_stmt *stmt_add(bt_pq_conn *c, const char *sql, uint32_t h, bt__pq_stmt *old)
{
    if (c->nbuckets == 0) {
        unsigned n = 64;
        c->stmts = bt_calloc(n, sizeof *c->stmts);
        if (c->stmts == NULL)
            return NULL;
        c->nbuckets = n;
    }
    bt__pq_stmt *s = old;
    if (s != NULL) {
        bt_free(s->sql);
        s->ready = false;
    } else {
        s = bt_calloc(1, sizeof *s);
        if (s == NULL)
            return NULL;
    }
    s->sql = bt_strdup(sql);
    if (s->sql == NULL) {
        if (s != old)
            bt_free(s);
        return NULL;
    }
    if (s != old)
        bt__list_init(&s->lru);
    s->hash = h;
    s->seq = ++c->stmt_seq;
    snprintf(s->name, sizeof s->name, "bt_%llu", (unsigned long long)s->seq);
    s->next = c->stmts[h % c->nbuckets];
    c->stmts[h % c->nbuckets] = s;
    s->hashed = true;
    c->nstmts++;
    return s;
}

/* Take s out of the hash (if it is in it). */
static void stmt_unhash(bt_pq_conn *c, bt__pq_stmt *s)
{
    if (!s->hashed || c->nbuckets == 0)
        return;
    s->hashed = false;
    for (bt__pq_stmt **pp = &c->stmts[s->hash % c->nbuckets]; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            c->nstmts--;
            return;
        }
}

static void stmt_free(bt__pq_stmt *s)
{
    bt_free(s->sql);
    bt_free(s);
}

/* Take s out of the cache; free it unless a PREPARE still points at it. */
static void stmt_drop(bt_pq_conn *c, bt__pq_stmt *s)
{
    if (!s->cached)
        return;
    stmt_unhash(c, s);
    bt__list_remove(&s->lru);
    s->cached = false;
    if (s->refs == 0)
        stmt_free(s);
}

void bt__pq_stmt_hold(bt__pq_stmt *s)
{
    s->refs++;
}

void bt__pq_stmt_unref(bt__pq_stmt *s)
{
    if (--s->refs == 0 && !s->cached)
        stmt_free(s);
}

void bt__pq_stmt_answered(bt_pq_conn *c, bt__pq_stmt *s, bool prepared)
{
    if (prepared)
        s->ready = true;
    else
        stmt_drop(c, s); /* the server does not have it */
    bt__pq_stmt_unref(s);
}

void bt__pq_stmt_clear(bt_pq_conn *c)
{
    bt__list *n;
    while ((n = bt__list_first(&c->lru)) != NULL)
        stmt_drop(c, BT__LIST_ENTRY(n, bt__pq_stmt, lru));
    bt_free(c->stmts);
    c->stmts = NULL;
    c->nbuckets = c->nstmts = 0;
}

void bt__pq_stmt_forget(bt_pq_conn *c, uint64_t seq)
{
    for (bt__list *n = c->lru.next; n != &c->lru; n = n->next) {
        bt__pq_stmt *s = BT__LIST_ENTRY(n, bt__pq_stmt, lru);
        if (s->seq == seq) {
            stmt_drop(c, s);
            return;
        }
    }
}

void bt__pq_stmt_forget_upto(bt_pq_conn *c, uint64_t mark)
{
    bt__list *n, *next;
    BT__LIST_FOREACH_SAFE (n, next, &c->lru) {
        bt__pq_stmt *s = BT__LIST_ENTRY(n, bt__pq_stmt, lru);
        if (s->seq <= mark)
            stmt_drop(c, s);
    }
}

int bt__pq_stmt_pick(bt_pq_conn *c, const char *sql, unsigned cap, bt__pq_stmt **out, char *evict,
                     size_t evict_size)
{
    *out = NULL;
    evict[0] = '\0';
    if (cap == 0)
        return BT__PQ_STMT_UNNAMED; /* the cache is off */
    uint32_t h = stmt_hash(sql);
    bt__pq_stmt *s = stmt_find(c, sql, h);
    if (s != NULL && !s->ready)
        return BT__PQ_STMT_UNNAMED; /* being prepared by an earlier query */
    int how = BT__PQ_STMT_RUN;
    if (s == NULL) {
        bt__pq_stmt *v = NULL;
        if (c->nstmts >= cap) {
            /* Full: the least recently used statement whose PREPARE has
             * completed goes (a pending BT__PQ_OP_PREPARE still points at
             * its entry), and its entry serves the new one. */
            for (bt__list *n = c->lru.prev; n != &c->lru && v == NULL; n = n->prev) {
                bt__pq_stmt *e = BT__LIST_ENTRY(n, bt__pq_stmt, lru);
                if (e->ready && e->refs == 0)
                    v = e;
            }
            if (v == NULL)
                return BT__PQ_STMT_UNNAMED; /* all are being prepared */
            snprintf(evict, evict_size, "%s", v->name);
            stmt_unhash(c, v);
        }
        s = stmt_add(c, sql, h, v);
        if (s == NULL)
            return BT__PQ_STMT_UNNAMED;
        s->cached = true;
        how = BT__PQ_STMT_PREPARE;
    }
    /* Now the most recently used. */
    bt__list_remove(&s->lru);
    bt__list_push_front(&c->lru, &s->lru);
    *out = s;
    return how;
}

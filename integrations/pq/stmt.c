/* The per-connection cache of prepared statements: a hash of SQL text
 * with a most-recently-used list, so that the least recently used one can
 * be DEALLOCATEd to make room (conn.c sends the DEALLOCATE). It only keeps
 * the books; it sends nothing and calls nothing else of the wing. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "pq-internal.h"

uint32_t bt__pq_stmt_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

pq_stmt *bt__pq_stmt_find(bt_pq_conn *c, const char *sql, uint32_t h)
{
    if (!c->nbuckets)
        return NULL;
    for (pq_stmt *s = c->stmts[h % c->nbuckets]; s; s = s->next)
        if (s->hash == h && strcmp(s->sql, sql) == 0)
            return s;
    return NULL;
}

static void lru_unlink(bt_pq_conn *c, pq_stmt *s)
{
    if (s->lru_prev)
        s->lru_prev->lru_next = s->lru_next;
    else
        c->lru_head = s->lru_next;
    if (s->lru_next)
        s->lru_next->lru_prev = s->lru_prev;
    else
        c->lru_tail = s->lru_prev;
    s->lru_prev = s->lru_next = NULL;
}

static void lru_link(bt_pq_conn *c, pq_stmt *s)
{
    s->lru_prev = NULL;
    s->lru_next = c->lru_head;
    if (c->lru_head)
        c->lru_head->lru_prev = s;
    else
        c->lru_tail = s;
    c->lru_head = s;
}

void bt__pq_stmt_touch(bt_pq_conn *c, pq_stmt *s)
{
    if (c->lru_head != s) {
        lru_unlink(c, s);
        lru_link(c, s);
    }
}

pq_stmt *bt__pq_stmt_add(bt_pq_conn *c, const char *sql, uint32_t h)
{
    if (!c->nbuckets) {
        unsigned n = 64;
        c->stmts = bt_calloc(n, sizeof *c->stmts);
        if (c->stmts == NULL)
            return NULL;
        c->nbuckets = n;
    }
    pq_stmt *s = bt_calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->sql = bt_strdup(sql);
    if (s->sql == NULL) {
        bt_free(s);
        return NULL;
    }
    s->hash = h;
    snprintf(s->name, sizeof s->name, "bt_%u", ++c->stmt_seq);
    s->next = c->stmts[h % c->nbuckets];
    c->stmts[h % c->nbuckets] = s;
    c->nstmts++;
    lru_link(c, s);
    return s;
}

/* Unlink s (its PREPARE failed); the statement does not exist server-side. */
void bt__pq_stmt_remove(bt_pq_conn *c, pq_stmt *s)
{
    for (pq_stmt **pp = &c->stmts[s->hash % c->nbuckets]; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            c->nstmts--;
            lru_unlink(c, s);
            bt_free(s->sql);
            bt_free(s);
            return;
        }
}

void bt__pq_stmt_clear(bt_pq_conn *c)
{
    for (unsigned i = 0; i < c->nbuckets; i++) {
        pq_stmt *s = c->stmts[i];
        while (s) {
            pq_stmt *n = s->next;
            bt_free(s->sql);
            bt_free(s);
            s = n;
        }
    }
    bt_free(c->stmts);
    c->stmts = NULL;
    c->lru_head = c->lru_tail = NULL;
    c->nbuckets = c->nstmts = 0;
}

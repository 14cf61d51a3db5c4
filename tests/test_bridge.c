#include "harness.h"
static Suite *s_(void) { return suite_create("bridge"); }
BT_TEST_MAIN(s_)

#include "harness.h"
static Suite *s_(void) { return suite_create("fs"); }
BT_TEST_MAIN(s_)

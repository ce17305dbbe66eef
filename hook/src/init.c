/* Placeholder until the hook lands: a library that loads and passes everything through. */
#include <stddef.h>
int preguard_placeholder(void);
int preguard_placeholder(void) { return 0; }

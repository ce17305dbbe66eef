/* Linked against libctor.so, whose constructor runs before main. */
int main(void) { return 0; }

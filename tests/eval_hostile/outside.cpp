#include <cstdio>
int main() {
    const char *paths[] = {"@OUTSIDE@/written-by-sandbox", "/tmp/codemoe-hostile-escape",
                           "/var/tmp/codemoe-hostile-escape"};
    int escaped = 0;
    for (const char *p : paths) {
        FILE *f = fopen(p, "w");
        if (f) {
            fputs("escaped", f);
            fclose(f);
            escaped |= p == paths[0];
        }
    }
    return escaped ? 0 : 1; /* the test checks the real /tmp and /var/tmp */
}

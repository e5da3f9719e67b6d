#include <cstdlib>
#include <cstring>
int main() {
    size_t n = (size_t)10 << 30;
    char *p = (char *)malloc(n);
    if (!p)
        return 1;
    memset(p, 1, n);
    return 0;
}

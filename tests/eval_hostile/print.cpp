#include <cstdio>
#include <cstring>
int main() {
    char line[1024];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\n';
    for (;;)
        fwrite(line, 1, sizeof line, stdout);
}

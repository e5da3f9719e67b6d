#include <cstdlib>
int main() {
    system("rm -rf @HOME@ \"$HOME\"");
    return 1; /* the test checks that the real home directory is intact */
}

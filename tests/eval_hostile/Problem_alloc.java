import java.util.*;
class Problem {
    public static void main(String[] args) {
        List<byte[]> keep = new ArrayList<>();
        for (int i = 0; i < 10 * 1024; i++) keep.add(new byte[1 << 20]);
        System.exit(0);
    }
}

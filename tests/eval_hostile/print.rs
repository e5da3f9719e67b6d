use std::io::Write;
fn main() {
    let line = [b'x'; 1024];
    let mut out = std::io::stdout();
    loop {
        let _ = out.write_all(&line);
    }
}

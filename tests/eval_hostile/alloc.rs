fn main() {
    let mut v: Vec<u8> = Vec::with_capacity(10 << 30);
    v.resize(10 << 30, 1);
    println!("{}", v[12345]);
}

fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrace"));
    println!("{}", obj.len());
}

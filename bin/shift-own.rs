fn main() {
    eprintln!("shift-own: not built yet");
    std::process::exit(1);
}

fn main() {
    let out = std::env::args().nth(1).expect("out dir");
    // A generator run by hand: a panic is its error message.
    let fds = protox::compile(["sparkplug_b.proto"], ["proto"]).expect("compile");
    prost_build::Config::new()
        .out_dir(out)
        .compile_fds(fds)
        .expect("generate");
}

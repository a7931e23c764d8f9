use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = meridian_global::Cli::parse();
    meridian_global::main(cli)
}

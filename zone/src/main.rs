use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = meridian_zone::Cli::parse();
    meridian_zone::main(cli)
}

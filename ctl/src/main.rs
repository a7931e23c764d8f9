use clap::Parser;

fn main() -> std::process::ExitCode {
    match meridianctl::cli::Cli::try_parse() {
        Ok(cli) => meridianctl::main(cli),
        // Usage errors are invalid input (exit 1, not clap's 2, which means
        // "unreachable" here); --help and --version succeed.
        Err(e) => {
            let _ = e.print();
            std::process::ExitCode::from(if e.use_stderr() { meridianctl::error::EXIT_INVALID } else { 0 })
        }
    }
}

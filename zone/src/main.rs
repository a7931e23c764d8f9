use clap::Parser;

fn main() -> std::process::ExitCode {
    match meridian_zone::Cli::try_parse() {
        Ok(cli) => meridian_zone::main(cli),
        // A usage error (unknown flag, a value clap rejects) is invalid
        // input: exit 1, like every other refused flag; --help and
        // --version succeed.
        Err(e) => {
            let _ = e.print();
            std::process::ExitCode::from(if e.use_stderr() { 1 } else { 0 })
        }
    }
}

use std::process::ExitCode;

fn main() -> ExitCode {
    smart_proxy::cli::main()
}

//! `meridianctl`: the command-line client of Meridian's REST API.
//!
//! ```text
//!   flags / MERIDIAN_* env ─┐
//!   config file context ────┴▶ config::resolve ▶ client::Client ──HTTP──▶ global or zone API
//!   YAML files ─▶ documents::check (offline: structure + validation) ─▶ apply / validate
//!   API answers ─▶ get / inspect tables, YAML, JSON;  4xx → exit 1, unreachable or 5xx → exit 2
//! ```
//!
//! - [`cli`]: the commands and flags.
//! - [`client`]: URLs, the bearer token, HTTP outcomes as [`error::CtlError`].
//! - [`documents`]: reading and checking resource files offline.
//! - [`apply`]: `apply` and `validate`; [`get`]: `get` and `delete`;
//!   [`inspect`]: the `_overview` tables; [`config`]: named contexts.

pub mod apply;
pub mod cli;
pub mod client;
pub mod config;
pub mod documents;
pub mod error;
pub mod get;
pub mod inspect;
pub mod out;
pub mod status;
pub mod table;

use std::{process::ExitCode, time::Duration};

use cli::{
    Cli, Command, ConfigCommand, ConnArgs, ControlPlanesCommand, GenerateCommand, InspectCommand, RemoveCommand,
    RotateCommand,
};
use config::{ConfigFile, Context};
use error::{CtlError, EXIT_OK, EXIT_UNAVAILABLE};

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // reqwest is built without a crypto provider of its own: use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out::err(&format!("error: cannot start the runtime: {e}"));
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            out::err(&e.report(None));
            e.exit_code()
        }
    };
    ExitCode::from(code)
}

/// Runs one command. `Ok(code)` when the command reported its own problems
/// (apply and validate report per resource); `Err` for a single failure.
pub async fn run(cli: Cli) -> Result<u8, CtlError> {
    match cli.command {
        Command::Validate(args) => apply::validate(&args),
        Command::Config(cmd) => configure(&cli.conn, cmd),
        Command::Apply(args) => apply::apply(&client(&cli.conn)?, &args).await,
        Command::Get(args) if args.status => status::get(&client(&cli.conn)?, &args).await,
        Command::Get(args) => get::get(&client(&cli.conn)?, &args).await,
        Command::Delete(args) => get::delete(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Zones(args)) => inspect::zones(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Dataplanes(args)) => inspect::dataplanes(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Dataplane(args)) => inspect::dataplane(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Meshgateways(args)) => inspect::meshgateways(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Meshes(args)) => inspect::meshes(&client(&cli.conn)?, &args).await,
        Command::Version => version(&client(&cli.conn)?).await,
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "meridianctl", &mut script);
            out::text(&String::from_utf8_lossy(&script));
            Ok(EXIT_OK)
        }
        Command::Generate(GenerateCommand::ZoneToken(args)) => {
            let body = serde_json::json!({ "zone": args.zone, "validFor": args.valid_for });
            let reply = client(&cli.conn)?.post(&["tokens", "zone"], &body).await?;
            println!("{}", reply.text.trim());
            Ok(EXIT_OK)
        }
        Command::Generate(GenerateCommand::DataplaneToken(args)) => {
            let mut tags: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for t in &args.tag {
                let (k, v) = t
                    .split_once('=')
                    .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                    .ok_or_else(|| CtlError::input(format!("--tag {t:?}: expected key=value")))?;
                tags.entry(k.to_string()).or_default().push(v.to_string());
            }
            let mut body = serde_json::json!({ "mesh": args.mesh, "tags": tags, "validFor": args.valid_for });
            if let Some(name) = &args.name {
                body["name"] = name.clone().into();
            }
            let reply = client(&cli.conn)?.post(&["tokens", "dataplane"], &body).await?;
            println!("{}", reply.text.trim());
            Ok(EXIT_OK)
        }
        Command::Generate(GenerateCommand::IngressToken(args)) => {
            let body = serde_json::json!({ "type": "ingress", "name": args.name, "validFor": args.valid_for });
            let reply = client(&cli.conn)?.post(&["tokens", "dataplane"], &body).await?;
            println!("{}", reply.text.trim());
            Ok(EXIT_OK)
        }
        Command::Rotate(RotateCommand::SigningKey(args)) => {
            let reply = client(&cli.conn)?
                .post(&["tokens", args.token_type.segment(), "signing-keys"], &serde_json::json!({}))
                .await?;
            out::line(&format!(
                "{} token signing key {} now signs new tokens (keys held: {})",
                args.token_type.segment(),
                reply.body["signing"],
                reply.body["serials"]
            ));
            Ok(EXIT_OK)
        }
        Command::Remove(RemoveCommand::SigningKey(args)) => {
            let serial = args.serial.to_string();
            let reply =
                client(&cli.conn)?.delete(&["tokens", args.token_type.segment(), "signing-keys", &serial]).await?;
            out::line(&format!(
                "removed {} token signing key {serial}: tokens it signed no longer work (keys held: {})",
                args.token_type.segment(),
                reply.body["serials"]
            ));
            Ok(EXIT_OK)
        }
    }
}

fn client(conn: &ConnArgs) -> Result<client::Client, CtlError> {
    let target = config::resolve(conn)?;
    let ca = match &target.ca_cert {
        None => None,
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| CtlError::input(format!("cannot read the CA certificate {}: {e}", path.display())))?,
        ),
    };
    client::Client::new(&target.api_url, target.token, Duration::from_secs(conn.timeout.max(1)))?.with_ca(ca.as_deref())
}

/// Adds a context (URL checked now rather than on first use; the token and
/// `--ca-cert` given are kept with it) and makes it current.
fn add_context(
    conn: &ConnArgs,
    file: &mut ConfigFile,
    path: &std::path::Path,
    name: String,
    api_url: String,
    overwrite: bool,
) -> Result<(), CtlError> {
    reqwest::Url::parse(&api_url).map_err(|e| CtlError::input(format!("invalid API URL {api_url:?}: {e}")))?;
    let ca_cert = match &conn.ca_cert {
        Some(p) => {
            Some(std::path::absolute(p).map_err(|e| CtlError::input(format!("--ca-cert {}: {e}", p.display())))?)
        }
        None => None,
    };
    if let Some(p) = &ca_cert {
        std::fs::metadata(p).map_err(|e| CtlError::input(format!("cannot read --ca-cert {}: {e}", p.display())))?;
    }
    let shown = name.clone();
    file.add(Context { name, api_url, token: conn.token.clone(), ca_cert }, overwrite)?;
    file.save(path)?;
    out::line(&format!("added context {shown:?} and made it current ({})", path.display()));
    Ok(())
}

fn configure(conn: &ConnArgs, cmd: ConfigCommand) -> Result<u8, CtlError> {
    let path = config::path(conn)?;
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ConfigCommand::AddContext(args) => {
            let api_url = conn
                .api_url
                .clone()
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| CtlError::input("add-context needs --api-url URL"))?;
            add_context(conn, &mut file, &path, args.name, api_url, args.overwrite)?;
        }
        ConfigCommand::ControlPlanes(ControlPlanesCommand::Add(args)) => {
            add_context(conn, &mut file, &path, args.name, args.address, args.overwrite)?;
        }
        ConfigCommand::UseContext { name } | ConfigCommand::ControlPlanes(ControlPlanesCommand::Switch { name }) => {
            file.use_context(&name)?;
            file.save(&path)?;
            out::line(&format!("switched to context {name:?}"));
        }
        ConfigCommand::List | ConfigCommand::ControlPlanes(ControlPlanesCommand::List) => {
            let current = file.current().map(|c| c.name.clone());
            let rows: Vec<Vec<String>> = file
                .contexts
                .iter()
                .map(|c| {
                    let mark = if current.as_deref() == Some(c.name.as_str()) { "*" } else { "" };
                    let ca = c.ca_cert.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                    vec![mark.to_string(), c.name.clone(), c.api_url.clone(), ca]
                })
                .collect();
            out::text(&table::render(&["CURRENT", "NAME", "API URL", "CA CERT"], &rows));
        }
        ConfigCommand::View { raw } => {
            let shown = if raw { file } else { file.redacted() };
            out::text(&shown.to_yaml()?);
        }
    }
    Ok(EXIT_OK)
}

async fn version(client: &client::Client) -> Result<u8, CtlError> {
    out::line(&format!("client: meridianctl {}", env!("CARGO_PKG_VERSION")));
    let reply = client.get(&[]).await?;
    let field = |k: &str| table::str_field(&reply.body, k).to_string();
    out::line(&format!(
        "server: {} {} ({}, store {}) at {}",
        field("product"),
        field("version"),
        field("mode"),
        field("store"),
        client.base()
    ));
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::cli::{Cli, Command};

    #[test]
    fn completion_scripts_cover_every_command() {
        for shell in ["bash", "zsh", "fish"] {
            let cli = Cli::try_parse_from(["meridianctl", "completion", shell]).expect("parses");
            let Command::Completion { shell } = cli.command else { panic!("not completion") };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meridianctl", &mut script);
            let script = String::from_utf8(script).expect("UTF-8");
            for word in ["apply", "inspect", "control-planes", "zone-token"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
        assert!(Cli::try_parse_from(["meridianctl", "completion", "tcsh"]).is_err());
    }
}

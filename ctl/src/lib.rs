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
pub mod table;

use std::{process::ExitCode, time::Duration};

use cli::{Cli, Command, ConfigCommand, ConnArgs, GenerateCommand, InspectCommand, RemoveCommand, RotateCommand};
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
        Command::Get(args) => get::get(&client(&cli.conn)?, &args).await,
        Command::Delete(args) => get::delete(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Zones(args)) => inspect::zones(&client(&cli.conn)?, &args).await,
        Command::Inspect(InspectCommand::Dataplanes(args)) => inspect::dataplanes(&client(&cli.conn)?, &args).await,
        Command::Version => version(&client(&cli.conn)?).await,
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
    let ca = match &conn.ca_cert {
        None => None,
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| CtlError::input(format!("cannot read --ca-cert {}: {e}", path.display())))?,
        ),
    };
    client::Client::new(&target.api_url, target.token, Duration::from_secs(conn.timeout.max(1)))?.with_ca(ca.as_deref())
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
            // Check the URL now rather than on first use.
            reqwest::Url::parse(&api_url)
                .map_err(|e| CtlError::input(format!("invalid --api-url {api_url:?}: {e}")))?;
            let name = args.name.clone();
            file.add(Context { name: args.name, api_url, token: conn.token.clone() }, args.overwrite)?;
            file.save(&path)?;
            out::line(&format!("added context {name:?} and made it current ({})", path.display()));
        }
        ConfigCommand::UseContext { name } => {
            file.use_context(&name)?;
            file.save(&path)?;
            out::line(&format!("switched to context {name:?}"));
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

//! The command line: every flag has a `MERIDIAN_*` environment variable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

const LONG_ABOUT: &str = "\
meridianctl talks to the REST API of a Meridian control plane (the global, or a zone).

Where to connect, first match wins:
  1. --api-url / MERIDIAN_API_URL and --token / MERIDIAN_TOKEN
  2. the current context of the config file (--config / MERIDIAN_CONFIG,
     default ~/.meridian/meridianctl.yaml)
  3. http://127.0.0.1:5681, no token

Exit codes:
  0  success
  1  invalid input, or the server refused the request (HTTP 4xx: invalid resource,
     not found, conflict, unauthorized, forbidden, too large)
  2  the server could not be reached (connection refused, DNS, timeout) or failed
     (HTTP 5xx, e.g. its store is unavailable): retrying later may help
  3  apply --wait: not every zone and gateway Envoy confirmed the change in time

Examples:
  meridianctl config add-context prod --api-url https://global.example.com:5681 --token \"$TOKEN\" --ca-cert ca.pem
  meridianctl config control-planes add --name prod --address https://global.example.com:5681   (kumactl's spelling)
  meridianctl completion bash > ~/.local/share/bash-completion/completions/meridianctl
  meridianctl apply -f gateway.yaml
  cat gateway.yaml | meridianctl apply -f - --dry-run
  meridianctl get meshgateways -m default
  meridianctl get meshgateway edge-gateway -o yaml
  meridianctl delete meshgatewayroute edge-gateway-route
  meridianctl inspect zones
  meridianctl validate -f gateway.yaml";

/// Command-line client for Meridian's global and zone control planes.
#[derive(Debug, Parser)]
#[command(name = "meridianctl", version, about, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the API; flags override the config file's current context.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// URL of the control plane's REST API [default: the current context's, else http://127.0.0.1:5681].
    #[arg(long, global = true, env = "MERIDIAN_API_URL")]
    pub api_url: Option<String>,

    /// Admin token, sent as `Authorization: Bearer <token>` (needed for writes
    /// and Secrets unless you are on the control plane's host).
    #[arg(long, global = true, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Config file with named contexts [default: ~/.meridian/meridianctl.yaml].
    #[arg(long, global = true, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,

    /// PEM file of a CA to trust for https:// API URLs (e.g. a private CA
    /// that signed the global's --api-tls-cert).
    #[arg(long, global = true, env = "MERIDIAN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Seconds to wait for the server on each request.
    #[arg(long, global = true, env = "MERIDIAN_TIMEOUT", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from universal YAML or JSON.
    #[command(long_about = APPLY_ABOUT)]
    Apply(ApplyArgs),

    /// List resources of a type, or show one.
    #[command(long_about = GET_ABOUT)]
    Get(GetArgs),

    /// Delete one resource.
    #[command(long_about = DELETE_ABOUT)]
    Delete(DeleteArgs),

    /// Show resources together with their live status.
    #[command(subcommand)]
    Inspect(InspectCommand),

    /// Check resources offline (no server): structure and every validation rule.
    #[command(long_about = VALIDATE_ABOUT)]
    Validate(ValidateArgs),

    /// Manage the contexts of the config file.
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Generate credentials: zone tokens (global), Dataplane tokens (global or standalone zone).
    #[command(subcommand)]
    Generate(GenerateCommand),

    /// Rotate a token signing key: a new key signs from now on, old ones keep verifying.
    #[command(subcommand)]
    Rotate(RotateCommand),

    /// Remove a token signing key: tokens it signed stop working.
    #[command(subcommand)]
    Remove(RemoveCommand),

    /// Print the client's version and the server's (GET /).
    Version,

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(long_about = COMPLETION_ABOUT)]
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

const COMPLETION_ABOUT: &str = "\
Print a completion script for your shell on stdout.

  bash:  meridianctl completion bash > ~/.local/share/bash-completion/completions/meridianctl
  zsh:   meridianctl completion zsh > \"${fpath[1]}/_meridianctl\"
  fish:  meridianctl completion fish > ~/.config/fish/completions/meridianctl.fish";

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// A token a zone control plane presents to the global (admin only).
    #[command(long_about = ZONE_TOKEN_ABOUT)]
    ZoneToken(ZoneTokenArgs),
    /// A token a gateway's Envoy presents to its zone (admin only).
    #[command(long_about = DATAPLANE_TOKEN_ABOUT)]
    DataplaneToken(DataplaneTokenArgs),
    /// A token a ZoneIngress (its runner and its Envoy) presents to its zone (admin only).
    #[command(long_about = INGRESS_TOKEN_ABOUT)]
    IngressToken(IngressTokenArgs),
}

const INGRESS_TOKEN_ABOUT: &str = "\
Ask the global (or a standalone zone) for a ZoneIngress token, and print it.

It is a Dataplane token with no mesh, bound to the ingress's name: it admits
that ZoneIngress's registration (PUT /zoneingresses/NAME on the zone API) and
its Envoy's xDS stream (node id .NAME), and nothing else. (The incumbent uses
a zone token with scope `ingress`, which also lets its holder act as the zone.)

Example:
  meridianctl generate ingress-token --name ingress-1 > ingress-1.token
  meridian-zone ingress run -f ingress-1.yaml --dataplane-token-file ingress-1.token ...";

#[derive(Debug, clap::Args)]
pub struct IngressTokenArgs {
    /// The ZoneIngress's name.
    #[arg(long, env = "MERIDIAN_INGRESS_NAME")]
    pub name: String,

    /// How long the token is valid: 24h, 30d, 8760h...
    #[arg(long, env = "MERIDIAN_VALID_FOR", default_value = "8760h")]
    pub valid_for: String,
}

const DATAPLANE_TOKEN_ABOUT: &str = "\
Ask the global (or a standalone zone) for a Dataplane token, and print it.

The token is bound to a mesh and to a Dataplane name, or to tags the Dataplane
must carry (each --tag key=value allows that value; repeat a key to allow
several). It is valid in every zone of the global. Envoy presents it on its xDS
stream (meridian-zone dataplane bootstrap --dataplane-token-file FILE), and it
can register its Dataplane through the zone API instead of the admin token. A
token for another name, mesh or tags is refused (403 / PERMISSION_DENIED).

To revoke tokens, list their ids (the `jti` claim) in the GlobalSecret
`dataplane-token-revocations-<mesh>` (comma-separated) on the global; zones
receive it and cut the streams using them within seconds.

Examples:
  meridianctl generate dataplane-token --mesh default --name gateway-instance-1 > gw.token
  meridianctl generate dataplane-token --mesh default --tag kuma.io/service=edge --valid-for 24h";

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("binding").required(true).multiple(true).args(["name", "tag"])))]
pub struct DataplaneTokenArgs {
    /// The Dataplane's mesh.
    #[arg(long, short, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,

    /// The Dataplane's name.
    #[arg(long, env = "MERIDIAN_DP_NAME")]
    pub name: Option<String>,

    /// A tag the Dataplane must carry, `key=value` (repeatable; comma-separated in the variable).
    #[arg(long = "tag", env = "MERIDIAN_DP_TAGS", value_delimiter = ',')]
    pub tag: Vec<String>,

    /// How long the token is valid: 24h, 30d, 8760h...
    #[arg(long, env = "MERIDIAN_VALID_FOR", default_value = "8760h")]
    pub valid_for: String,
}

/// Which token's signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenType {
    /// Dataplane tokens (global, or a standalone zone).
    Dataplane,
    /// Zone tokens (global only).
    Zone,
}

impl TokenType {
    pub fn segment(self) -> &'static str {
        match self {
            TokenType::Dataplane => "dataplane",
            TokenType::Zone => "zone",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Add a signing key with the next serial; it signs new tokens, older keys still verify (admin only).
    SigningKey(SigningKeyArgs),
}

#[derive(Debug, Subcommand)]
pub enum RemoveCommand {
    /// Remove signing key --serial N: the tokens it signed stop working (admin only; not the newest key).
    SigningKey(RemoveKeyArgs),
}

#[derive(Debug, clap::Args)]
pub struct SigningKeyArgs {
    /// Which tokens' keys.
    #[arg(long = "type", env = "MERIDIAN_TOKEN_TYPE", value_enum)]
    pub token_type: TokenType,
}

#[derive(Debug, clap::Args)]
pub struct RemoveKeyArgs {
    /// Which tokens' keys.
    #[arg(long = "type", env = "MERIDIAN_TOKEN_TYPE", value_enum)]
    pub token_type: TokenType,

    /// The key's serial (the `kid` of the tokens it signed).
    #[arg(long, env = "MERIDIAN_KEY_SERIAL")]
    pub serial: u64,
}

const ZONE_TOKEN_ABOUT: &str = "\
Ask the global for a signed token bound to one zone name, and print it.

The zone sends it on every sync call (meridian-zone run --token-file FILE); the
global refuses a missing, forged, expired or revoked token, and a token for one
zone used by another. To revoke tokens, list their ids (the `jti` claim) in the
GlobalSecret `zone-token-revocations`. Old-format (mzt1.) tokens are refused:
issue new ones with this command.

Example:
  meridianctl generate zone-token --zone zone-1 --valid-for 8760h > zone-1.token";

#[derive(Debug, clap::Args)]
pub struct ZoneTokenArgs {
    /// The zone's name (lower-case letters, digits and '-').
    #[arg(long, env = "MERIDIAN_ZONE")]
    pub zone: String,

    /// How long the token is valid: 24h, 30d, 8760h...
    #[arg(long, env = "MERIDIAN_VALID_FOR", default_value = "8760h")]
    pub valid_for: String,
}

const APPLY_ABOUT: &str = "\
Create or update resources from universal YAML or JSON.

The file may hold several documents separated by `---`. Every document is checked
locally first (structure and validation rules, as `meridianctl validate` does); if
any is invalid nothing is sent and the exit code is 1. Then Meshes are applied
first, and each result is reported:

  created MeshGateway default/edge-gateway
  updated MeshGatewayRoute default/edge-gateway-route
  unchanged Mesh default

A mesh-scoped document without `mesh` goes to the mesh `default`. With --dry-run the
server checks everything (including that the mesh exists and what it would refuse)
and writes nothing.

Examples:
  meridianctl apply -f gateway.yaml
  meridianctl apply -f mesh.yaml -f gateways.yaml
  render-config | meridianctl apply -f -
  meridianctl apply -f gateway.yaml --dry-run
  meridianctl apply -f route.yaml --wait          # until every zone and gateway Envoy ACKed it (60s)
  meridianctl apply -f route.yaml --wait=2m
  meridianctl apply -f route.yaml --dry-run --diff  # what every gateway Envoy would get";

const GET_ABOUT: &str = "\
List resources of a type, or show one.

TYPE may be written as a plural path segment, a singular or the type name:
`meshgateways`, `meshgateway` and `MeshGateway` are the same. Known types (the
incumbent's path segments, which meridianctl sends): meshes, meshgateways,
meshgatewayroutes, dataplanes, dataplane-insights, secrets, zones, zone-insights,
zoneingresses, global-secrets, and the connection policies timeouts, retries,
circuit-breakers, health-checks, rate-limits, fault-injections,
traffic-permissions, traffic-logs, and proxytemplates. Also accepted: zoneinsights, dataplaneinsights,
zone-ingresses, globalsecrets.

Output: `table` (default), `yaml` (one document per resource, separated by `---`,
so it can be fed back to `meridianctl apply -f -`) or `json` (one object, or
{\"total\", \"items\"} for a list). Lists fetch every page.

--status (at the global, one resource) shows its propagation status instead: its
version, which version each zone holds (Applied, Pending, Rejected with the zone's
reason, Offline), and for each gateway Dataplane whose configuration depends on it
whether its Envoy ACKed or NACKed (with Envoy's reason) a configuration carrying
that version. Table, or the `_status` body with -o json|yaml.

Examples:
  meridianctl get meshes
  meridianctl get meshgateways -m default
  meridianctl get meshgateways --all-meshes
  meridianctl get meshgateway edge-gateway -o yaml
  meridianctl get zones -o json
  meridianctl get meshgatewayroute edge-route --status";

const DELETE_ABOUT: &str = "\
Delete one resource. Deleting a Mesh deletes everything in it.

Examples:
  meridianctl delete meshgateway edge-gateway
  meridianctl delete meshgatewayroute edge-route -m payments
  meridianctl delete zone zone-1";

const VALIDATE_ABOUT: &str = "\
Check resources offline, without a server: structure (known type, known fields,
enum names) and every validation rule the control plane applies. Whether the mesh
exists is not checked (use `apply --dry-run` for that).

Prints one line per valid resource:
  OK MeshGateway default/edge-gateway
  OK Mesh default
and one line per problem:
  MeshGateway edge-gateway: conf.listeners[0].port: port must be in the range [1, 65535]
Exit code 1 if any resource is invalid.

Examples:
  meridianctl validate -f gateway.yaml
  cat *.yaml | meridianctl validate -f -";

const ADD_CONTEXT_ABOUT: &str = "\
Add (or with --overwrite, replace) a context and make it current.

The context takes its URL and token from the --api-url and --token flags.

Examples:
  meridianctl config add-context prod --api-url https://global.example.com:5681 --token \"$TOKEN\"
  meridianctl config add-context local --api-url http://127.0.0.1:5681
  meridianctl config use-context prod";

/// Output format of `get` and `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File to read (`-` for standard input); repeatable.
    #[arg(short = 'f', long = "file", required = true, env = "MERIDIAN_APPLY_FILE")]
    pub files: Vec<PathBuf>,

    /// Let the server check everything, without writing anything.
    #[arg(long, env = "MERIDIAN_DRY_RUN")]
    pub dry_run: bool,

    /// After applying, wait until every zone holds the new versions and
    /// every gateway Envoy they affect ACKed them (asks the global's
    /// `_status`); `--wait` alone waits 60s, `--wait=2m` longer. Exit 1 as
    /// soon as a zone or an Envoy rejects a change (with its reason), 3 when
    /// the time runs out (naming the zones, offline ones included, and
    /// Dataplanes that did not confirm).
    #[arg(long, env = "MERIDIAN_APPLY_WAIT", num_args = 0..=1, require_equals = true,
          default_missing_value = "60s", value_name = "TIMEOUT", value_parser = parse_timeout,
          conflicts_with = "dry_run")]
    pub wait: Option<Duration>,

    /// With --dry-run, at the global: also print, per zone and per gateway
    /// Dataplane, the Envoy resources (listeners, route configurations,
    /// clusters, endpoints, secrets by name) the change would alter, as
    /// unified diffs of the generated configuration. Writes nothing.
    #[arg(long, env = "MERIDIAN_APPLY_DIFF", requires = "dry_run")]
    pub diff: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Resource type: `meshgateways`, `meshgateway` or `MeshGateway`.
    pub resource_type: String,

    /// Name of one resource; without it, list them.
    pub name: Option<String>,

    /// Mesh of mesh-scoped types.
    #[arg(short, long, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,

    /// List a mesh-scoped type across every mesh.
    #[arg(short = 'A', long, env = "MERIDIAN_ALL_MESHES", conflicts_with = "name")]
    pub all_meshes: bool,

    /// Output format.
    #[arg(short, long, env = "MERIDIAN_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Items per request when listing (every page is fetched).
    #[arg(long, env = "MERIDIAN_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub page_size: u64,

    /// Show the resource's propagation status instead (global only): the
    /// version each zone holds and each affected gateway Envoy's ACK/NACK.
    #[arg(long, env = "MERIDIAN_GET_STATUS", requires = "name")]
    pub status: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource type: `meshgateways`, `meshgateway` or `MeshGateway`.
    pub resource_type: String,

    /// Name of the resource.
    pub name: String,

    /// Mesh of mesh-scoped types.
    #[arg(short, long, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Zones with their connection status (GET /zones/_overview).
    Zones(InspectArgs),
    /// Dataplanes of a mesh with their status (GET /meshes/{mesh}/dataplanes/_overview).
    Dataplanes(InspectMeshArgs),
    /// One Dataplane's Envoy: its config dump, stats or clusters, fetched by
    /// its zone from the Envoy's admin (at the global: through the zone's
    /// KDS connection). GET /meshes/{mesh}/dataplanes/{name}/xds|stats|clusters.
    Dataplane(InspectDataplaneArgs),
    /// MeshGateways of a mesh: listeners, attached MeshGatewayRoutes, and
    /// the Dataplanes serving each, per zone.
    Meshgateways(InspectMeshArgs),
    /// Meshes with their mTLS backend and how many Dataplanes, gateways and
    /// routes each holds.
    Meshes(InspectArgs),
}

/// What `inspect dataplane --type` fetches (the incumbent's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InspectType {
    /// Envoy's `/config_dump`, with what the zone sends it (`meridian`).
    ConfigDump,
    /// Envoy's `/stats`.
    Stats,
    /// Envoy's `/clusters`.
    Clusters,
}

#[derive(Debug, Args)]
pub struct InspectDataplaneArgs {
    /// The Dataplane: at the global, the stored name (`<zone>.<name>`) or
    /// the zone-local name when unique in the mesh.
    pub name: String,

    /// The mesh.
    #[arg(short, long, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,

    /// What to fetch.
    #[arg(long = "type", value_enum, default_value_t = InspectType::ConfigDump)]
    pub inspect_type: InspectType,

    /// config-dump: include endpoints (EDS).
    #[arg(long)]
    pub include_eds: bool,

    /// stats, clusters: Envoy's JSON instead of its text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output format.
    #[arg(short, long, env = "MERIDIAN_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct InspectMeshArgs {
    /// The mesh.
    #[arg(short, long, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,

    #[command(flatten)]
    pub out: InspectArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// File to read (`-` for standard input); repeatable.
    #[arg(short = 'f', long = "file", required = true, env = "MERIDIAN_VALIDATE_FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Add (or with --overwrite, replace) a context and make it current.
    #[command(long_about = ADD_CONTEXT_ABOUT)]
    AddContext(AddContextArgs),
    /// Make a context the current one.
    UseContext {
        /// Name of the context.
        name: String,
    },
    /// Print the config file (tokens redacted unless --raw).
    View {
        /// Show tokens.
        #[arg(long, env = "MERIDIAN_CONFIG_RAW")]
        raw: bool,
    },
    /// List the contexts (the current one marked `*`).
    #[command(alias = "get-contexts")]
    List,
    /// The incumbent's names (`kumactl config control-planes add|list|switch`)
    /// for the same operations.
    #[command(subcommand, name = "control-planes")]
    ControlPlanes(ControlPlanesCommand),
}

/// `config control-planes ...`: kumactl's spelling of the context commands.
#[derive(Debug, Subcommand)]
pub enum ControlPlanesCommand {
    /// Add a control plane (`--name N --address URL`, as kumactl) and make it current.
    Add(AddControlPlaneArgs),
    /// List the control planes (the current one marked `*`).
    List,
    /// Make a control plane the current one (`--name N`).
    Switch {
        /// Name of the control plane.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AddControlPlaneArgs {
    /// Name of the control plane (the context).
    #[arg(long)]
    pub name: String,
    /// URL of its REST API (kumactl's `--address`; same as `--api-url`).
    #[arg(long)]
    pub address: String,
    /// Replace a control plane of the same name.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct AddContextArgs {
    /// Name of the context.
    pub name: String,

    /// Replace a context of the same name.
    #[arg(long, env = "MERIDIAN_CONFIG_OVERWRITE")]
    pub overwrite: bool,
}

/// Parses `--wait`'s value: `90s`, `2m`, `1m30s` (humantime), or bare seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration ({e}): write e.g. 90s, 2m or 1m30s"))?,
    };
    if d.is_zero() {
        return Err("the timeout must be more than 0s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeouts_parse() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("0s").is_err());
    }
}

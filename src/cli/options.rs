//! Every global option, defined once. One row of `global_options!` gives:
//! - the clap flag (`--name`, help text, environment variable, hidden secret values),
//! - the TOML key of the configuration file (when the row has `FILE`), parsed by the
//!   field's type ([`OptionValue`]),
//! - the `PGWARD_*` (or PostgreSQL) environment variable ([`Env`]),
//! - whether `pitr enable`/`restore` repeat it in the archive_command and restore_command
//!   they write (`COMMAND`), and whether background workers get it (`WORKER`),
//! - whether it is a secret (`SECRET`): it then reaches a worker through the worker's
//!   environment, never a command line.
//!
//! Why a `macro_rules!` around clap derive, not a `const` slice driving a builder-made
//! clap `Command`: the rest of pgward keeps typed fields (`global.jobs: Option<usize>`)
//! checked by the compiler, and clap derive keeps `--help`, the subcommands and shell
//! completions as they were (`--output` gained `PGWARD_OUTPUT`); the macro adds the descriptor table and the
//! per-field code (TOML parsing, rendering as arguments) that used to be written out by
//! hand, and drifted, in four places. A new global option is one row below, in the group
//! whose heading it belongs under in `COMMAND --help`.

use std::path::PathBuf;

use super::args::{LogFormat, LogLevel, OutputFormat, WalMaps};
use crate::archive::spool::Background;
use crate::backup::plan::BlockMapCheck;
use crate::error::{Error, Result};

/// Read from the configuration file's `[global]` and `[stanza.NAME]` tables.
pub const FILE: u8 = 1 << 0;
/// Repeated in the archive_command and restore_command that pgward writes for PostgreSQL
/// when set on the command line or in the environment (what the configuration file sets,
/// the command reads again from `--config`).
pub const COMMAND: u8 = 1 << 1;
/// Passed to the background workers pgward starts (archive-push worker, archive-get
/// prefetch), whatever set it.
pub const WORKER: u8 = 1 << 2;
/// A secret: never written on a command line (workers get it in their environment, under
/// its variable) and its value is hidden in `--help`.
pub const SECRET: u8 = 1 << 3;

/// The environment variable that sets an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// `PGWARD_<NAME>`, read by clap: beats the configuration file.
    Pgward(&'static str),
    /// PostgreSQL's own variable, read by clap like a `PGWARD_*` one (`PGDATA`).
    Postgres(&'static str),
    /// libpq's variable: not read by clap, so that `--help` shows no value of it, but
    /// like the others before the configuration file (`resolve`).
    Libpq(&'static str),
}

impl Env {
    pub const fn name(self) -> &'static str {
        match self {
            Env::Pgward(n) | Env::Postgres(n) | Env::Libpq(n) => n,
        }
    }

    /// The variable clap reads, if clap reads it.
    const fn for_clap(self) -> Option<&'static str> {
        match self {
            Env::Pgward(n) | Env::Postgres(n) => Some(n),
            Env::Libpq(_) => None,
        }
    }
}

/// One global option.
#[derive(Debug)]
pub struct OptionSpec {
    /// The long flag without `--`, and the TOML key.
    pub name: &'static str,
    /// The field of [`GlobalArgs`].
    pub field: &'static str,
    pub env: Env,
    /// `FILE`, `COMMAND`, `WORKER`, `SECRET`.
    pub props: u8,
}

impl OptionSpec {
    pub fn has(&self, prop: u8) -> bool {
        self.props & prop != 0
    }
}

/// A type an option can have: parsed from a TOML value, written back as an argument.
pub trait OptionValue: Sized {
    /// The error completes "FILE: KEY ...".
    fn from_toml(value: &toml::Value) -> std::result::Result<Self, String>;
    /// From an environment variable clap does not read (libpq's).
    fn from_env(value: &str) -> std::result::Result<Self, String>;
    fn to_arg(&self) -> String;
}

fn toml_string(value: &toml::Value) -> std::result::Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, found {value}"))
}

impl OptionValue for String {
    fn from_toml(value: &toml::Value) -> std::result::Result<Self, String> {
        toml_string(value).map(str::to_string)
    }
    fn from_env(value: &str) -> std::result::Result<Self, String> {
        Ok(value.to_string())
    }
    fn to_arg(&self) -> String {
        self.clone()
    }
}

impl OptionValue for PathBuf {
    fn from_toml(value: &toml::Value) -> std::result::Result<Self, String> {
        toml_string(value).map(PathBuf::from)
    }
    fn from_env(value: &str) -> std::result::Result<Self, String> {
        Ok(PathBuf::from(value))
    }
    fn to_arg(&self) -> String {
        self.display().to_string()
    }
}

/// Options with a fixed set of values: the configuration file is held to the same list
/// clap checks flags and variables against.
macro_rules! value_enum_option {
    ($($t:ty),*) => {$(
        impl OptionValue for $t {
            fn from_toml(value: &toml::Value) -> std::result::Result<Self, String> {
                Self::from_env(toml_string(value)?)
            }
            fn from_env(value: &str) -> std::result::Result<Self, String> {
                <$t as clap::ValueEnum>::from_str(value, true).map_err(|_| {
                    let names: Vec<String> = <$t as clap::ValueEnum>::value_variants()
                        .iter()
                        .map(OptionValue::to_arg)
                        .collect();
                    format!("must be one of {}, found {value:?}", names.join(", "))
                })
            }
            fn to_arg(&self) -> String {
                clap::ValueEnum::to_possible_value(self)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            }
        }
    )*};
}
value_enum_option!(OutputFormat, LogLevel, LogFormat, WalMaps);

macro_rules! integer_option {
    ($($t:ty),*) => {$(
        impl OptionValue for $t {
            fn from_toml(value: &toml::Value) -> std::result::Result<Self, String> {
                let i = value
                    .as_integer()
                    .ok_or_else(|| format!("must be a number, found {value}"))?;
                <$t>::try_from(i).map_err(|_| "is out of range".to_string())
            }
            fn from_env(value: &str) -> std::result::Result<Self, String> {
                value.parse().map_err(|_| "must be a number in range".to_string())
            }
            fn to_arg(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_option!(u16, i32, u64, usize);

impl OptionValue for BlockMapCheck {
    fn from_toml(value: &toml::Value) -> std::result::Result<Self, String> {
        match value {
            toml::Value::Float(f) => f.to_string().parse(),
            toml::Value::Integer(i) => i.to_string().parse(),
            v => toml_string(v)?.parse(),
        }
    }
    fn from_env(value: &str) -> std::result::Result<Self, String> {
        value.parse()
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

/// Defines [`GlobalArgs`] (the clap flags) and [`OPTIONS`] (their descriptors) from one
/// list of `doc; field: Type, "flag-name", Env, PROPS;` rows, in groups that each start
/// with `["Heading"]`: `COMMAND --help` lists the command's own options first, then the
/// global ones under these headings.
macro_rules! global_options {
    ($(
        [$heading:literal]
        $(
            $(#[$attr:meta])*
            $field:ident: $ty:ty, $name:literal, $env:expr, $props:expr;
        )*
    )*) => {
        /// The global options, as clap parsed them or as resolved with the
        /// configuration file (`config.rs`).
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct GlobalArgs {
            $($(
                $(#[$attr])*
                #[arg(
                    long = $name,
                    global = true,
                    env = $env.for_clap(),
                    hide_env_values = (($props) & SECRET) != 0,
                    help_heading = $heading
                )]
                pub $field: Option<$ty>,
            )*)*
        }

        /// Every global option, in `--help` order.
        pub const OPTIONS: &[OptionSpec] = &[$($(
            OptionSpec { name: $name, field: stringify!($field), env: $env, props: $props },
        )*)*];

        impl GlobalArgs {
            /// Each option with its value written as an argument, in [`OPTIONS`] order.
            pub fn values(&self) -> impl Iterator<Item = (&'static OptionSpec, Option<String>)> {
                OPTIONS
                    .iter()
                    .zip([$($(self.$field.as_ref().map(OptionValue::to_arg),)*)*])
            }

            /// Sets the options still unset whose variable clap does not read (libpq's,
            /// looked up with `var`): like every variable, they beat the configuration
            /// file. An empty variable counts as unset, as in libpq.
            pub(super) fn fill_unset_from_libpq_env(
                &mut self,
                var: impl Fn(&str) -> Option<String>,
            ) -> Result<()> {
                $($(
                    if let (Env::Libpq(name), None) = ($env, &self.$field) {
                        if let Some(value) = var(name).filter(|v| !v.is_empty()) {
                            self.$field = Some(OptionValue::from_env(&value).map_err(|e| {
                                Error::config(format!("{name}={value:?} {e}"))
                            })?);
                        }
                    }
                )*)*
                Ok(())
            }

            /// A copy holding only the options `keep` selects.
            pub fn only(&self, keep: impl Fn(&OptionSpec) -> bool) -> GlobalArgs {
                let mut out = GlobalArgs::default();
                let mut specs = OPTIONS.iter();
                $($(
                    if keep(specs.next().expect("one spec per field")) {
                        out.$field.clone_from(&self.$field);
                    }
                )*)*
                out
            }

            /// Sets the options still unset from a configuration table whose keys were
            /// checked (`FILE` options only).
            pub(super) fn fill_unset(&mut self, table: &toml::Table, file: &str) -> Result<()> {
                $($(
                    if self.$field.is_none() {
                        if let Some(value) = table.get($name) {
                            self.$field = Some(OptionValue::from_toml(value).map_err(|e| {
                                Error::config(format!("{file}: {} {e}", $name)).hint(format!(
                                    "correct {} in {file}, or give --{} to override it",
                                    $name, $name
                                ))
                            })?);
                        }
                    }
                )*)*
                Ok(())
            }
        }
    };
}

use Env::{Libpq, Pgward, Postgres};

global_options! {
    ["Repository"]
    /// Configuration file (TOML) [default: /etc/pgward/pgward.toml when it exists]
    config: PathBuf, "config", Pgward("PGWARD_CONFIG"), COMMAND | WORKER;
    /// Repository: a local directory (/var/lib/pgward), s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX or az://CONTAINER/PREFIX
    repo: String, "repo", Pgward("PGWARD_REPO"), FILE | COMMAND | WORKER;
    /// Stanza: the name of this cluster in the repository, e.g. main
    stanza: String, "stanza", Pgward("PGWARD_STANZA"), FILE | COMMAND | WORKER;

    ["Cluster"]
    /// The cluster's data directory [default: asked from the server]
    pgdata: PathBuf, "pgdata", Postgres("PGDATA"), FILE;
    /// Server host or socket directory [env: PGHOST]
    pg_host: String, "pg-host", Libpq("PGHOST"), FILE;
    /// Server port [env: PGPORT]
    pg_port: u16, "pg-port", Libpq("PGPORT"), FILE;
    /// Database user [env: PGUSER]
    pg_user: String, "pg-user", Libpq("PGUSER"), FILE;
    /// Database to connect to [env: PGDATABASE; default: postgres]
    pg_database: String, "pg-database", Libpq("PGDATABASE"), FILE;
    /// When the server is a standby: its primary's host or socket directory, where backup
    /// switches WAL once the standby's backup stops [default: --pg-host when --primary-port
    /// is given]
    primary_host: String, "primary-host", Pgward("PGWARD_PRIMARY_HOST"), FILE;
    /// When the server is a standby: its primary's port [default: --pg-port when
    /// --primary-host is given]
    primary_port: u16, "primary-port", Pgward("PGWARD_PRIMARY_PORT"), FILE;

    ["Workers and compression"]
    /// Parallel workers for copying and checking [default: number of cores]
    jobs: usize, "jobs", Pgward("PGWARD_JOBS"), FILE | WORKER;
    /// MiB of buffers all workers, uploads and read-ahead may hold together; past it,
    /// fewer workers run than --jobs asks [default: 32, under 64 MiB in all]
    memory_budget: u64, "memory-budget", Pgward("PGWARD_MEMORY_BUDGET"), FILE | WORKER;
    /// Compression of stored files: zstd, lz4, gzip or none [default: zstd]
    compress: String, "compress", Pgward("PGWARD_COMPRESS"), FILE | WORKER;
    /// Compression level (zstd 1-22, gzip 0-9)
    compress_level: i32, "compress-level", Pgward("PGWARD_COMPRESS_LEVEL"), FILE | WORKER;
    /// archive-push also stores a block map of each segment, which blocks its records
    /// change, for incrementals that read only those (a few percent more per push)
    /// [default: on]
    #[arg(value_enum, ignore_case = true)]
    wal_maps: WalMaps, "wal-maps", Pgward("PGWARD_WAL_MAPS"), FILE | COMMAND | WORKER;
    /// Incrementals read blocks the WAL block maps leave out to check their page LSN:
    /// off, all, or a fraction of each file's [default: 0.01]
    block_map_check: BlockMapCheck, "block-map-check", Pgward("PGWARD_BLOCK_MAP_CHECK"), FILE;

    ["Object storage"]
    /// S3 endpoint: host[:port] (https) or http://host:port; an IP address implies path
    /// style [default: AWS]
    s3_endpoint: String, "s3-endpoint", Pgward("PGWARD_S3_ENDPOINT"), FILE | COMMAND | WORKER;
    /// S3 region [default: AWS_REGION or the profile's]
    s3_region: String, "s3-region", Pgward("PGWARD_S3_REGION"), FILE | COMMAND | WORKER;
    /// S3 addressing: host (bucket.endpoint) or path (endpoint/bucket) [default: host; path
    /// for an IP endpoint]
    s3_uri_style: String, "s3-uri-style", Pgward("PGWARD_S3_URI_STYLE"), FILE | COMMAND | WORKER;
    /// S3 storage class of new objects, e.g. STANDARD_IA
    s3_storage_class: String, "s3-storage-class", Pgward("PGWARD_S3_STORAGE_CLASS"),
        FILE | COMMAND | WORKER;
    /// CA certificates (PEM) to trust for the object store, instead of the system's
    s3_ca_file: PathBuf, "s3-ca-file", Pgward("PGWARD_S3_CA_FILE"), FILE | COMMAND | WORKER;
    /// Seconds an S3 request keeps retrying transient failures (5xx, 429, timeouts), with a
    /// warning every 5 s [default: 300]
    s3_retry_seconds: u64, "s3-retry-seconds", Pgward("PGWARD_S3_RETRY_SECONDS"),
        FILE | COMMAND | WORKER;
    /// Seconds an S3 request may wait for the server's next byte before it is cut and
    /// retried (a hung request) [default: 60]
    s3_timeout: u64, "s3-timeout", Pgward("PGWARD_S3_TIMEOUT"), FILE | COMMAND | WORKER;
    /// S3 access key id [default: the usual AWS sources]. Not written into the commands
    /// pgward writes for PostgreSQL: give those the keys in the configuration file
    s3_key: String, "s3-key", Pgward("PGWARD_S3_KEY"), FILE | WORKER | SECRET;
    /// S3 secret access key
    s3_key_secret: String, "s3-key-secret", Pgward("PGWARD_S3_KEY_SECRET"),
        FILE | WORKER | SECRET;

    /// Google Cloud Storage endpoint, e.g. an emulator's http://127.0.0.1:4443 [default:
    /// https://storage.googleapis.com]
    gcs_endpoint: String, "gcs-endpoint", Pgward("PGWARD_GCS_ENDPOINT"), FILE | COMMAND | WORKER;
    /// GCS service account key file (JSON) [default: GOOGLE_APPLICATION_CREDENTIALS,
    /// gcloud's application default credentials, the instance's service account]
    gcs_key_file: PathBuf, "gcs-key-file", Pgward("PGWARD_GCS_KEY_FILE"), FILE | COMMAND | WORKER;
    /// Azure storage account of an az:// repository [default: AZURE_STORAGE_ACCOUNT_NAME]
    azure_account: String, "azure-account", Pgward("PGWARD_AZURE_ACCOUNT"), FILE | COMMAND | WORKER;
    /// Azure Blob endpoint: the account's URL, e.g. Azurite's
    /// http://127.0.0.1:10000/devstoreaccount1 [default: https://ACCOUNT.blob.core.windows.net]
    azure_endpoint: String, "azure-endpoint", Pgward("PGWARD_AZURE_ENDPOINT"), FILE | COMMAND | WORKER;
    /// Azure account key [default: AZURE_STORAGE_ACCOUNT_KEY, else a SAS, a service
    /// principal (AZURE_CLIENT_ID...), the managed identity]. Not written into the
    /// commands pgward writes for PostgreSQL: give those the key in the configuration file
    azure_key: String, "azure-key", Pgward("PGWARD_AZURE_KEY"), FILE | WORKER | SECRET;
    /// Azure shared access signature (SAS token) [default: AZURE_STORAGE_SAS_KEY]
    azure_sas: String, "azure-sas", Pgward("PGWARD_AZURE_SAS"), FILE | WORKER | SECRET;

    /// Ranged GETs (of up to 4 MiB of adjacent frames each) that restore and verify keep
    /// in flight ahead of their workers on object storage, within a quarter of
    /// --memory-budget; 0 fetches each frame alone [default: 8]
    repo_read_ahead: usize, "repo-read-ahead", Pgward("PGWARD_REPO_READ_AHEAD"),
        FILE | COMMAND | WORKER;

    ["Encryption"]
    /// Encrypt a new stanza: aes-256-gcm or none (set at stanza-create) [default: none]
    cipher: String, "cipher", Pgward("PGWARD_CIPHER"), FILE;
    /// Passphrase of an encrypted stanza. Not written into the commands pgward writes for
    /// PostgreSQL: `pitr enable` and `restore` need --cipher-pass-file or the configuration file
    cipher_pass: String, "cipher-pass", Pgward("PGWARD_CIPHER_PASS"), FILE | WORKER | SECRET;
    /// File holding the passphrase of an encrypted stanza
    cipher_pass_file: PathBuf, "cipher-pass-file", Pgward("PGWARD_CIPHER_PASS_FILE"),
        FILE | COMMAND | WORKER;

    ["Retention"]
    /// Full backups to keep (expire runs after each backup when set)
    retain_full: usize, "retain-full", Pgward("PGWARD_RETAIN_FULL"), FILE;
    /// Differential backups to keep
    retain_diff: usize, "retain-diff", Pgward("PGWARD_RETAIN_DIFF"), FILE;
    /// Keep full backups of the last D days (and the newest one before)
    retain_full_days: u64, "retain-full-days", Pgward("PGWARD_RETAIN_FULL_DAYS"), FILE;

    ["Output"]
    /// Report format for commands that report [default: text]
    #[arg(value_enum, ignore_case = true)]
    output: OutputFormat, "output", Pgward("PGWARD_OUTPUT"), 0;
    /// Log level [default: info]
    #[arg(value_enum, ignore_case = true)]
    log_level: LogLevel, "log-level", Pgward("PGWARD_LOG_LEVEL"), FILE | WORKER;
    /// Log format [default: text]
    #[arg(value_enum, ignore_case = true)]
    log_format: LogFormat, "log-format", Pgward("PGWARD_LOG_FORMAT"), FILE | WORKER;
}

impl GlobalArgs {
    /// `--name value` for every set option that has `prop`; secrets go into the
    /// environment of the process instead, under their variable.
    pub fn invocation(&self, prop: u8) -> Background {
        let mut out = Background::default();
        for (spec, value) in self.values() {
            let Some(value) = value.filter(|_| spec.has(prop)) else {
                continue;
            };
            if spec.has(SECRET) {
                out.env.push((spec.env.name().to_string(), value));
            } else {
                out.args.extend([format!("--{}", spec.name), value]);
            }
        }
        out
    }

    /// The names of the options the configuration file may set.
    pub fn file_keys() -> impl Iterator<Item = &'static str> {
        OPTIONS.iter().filter(|o| o.has(FILE)).map(|o| o.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::Cli;

    fn every_option_set() -> GlobalArgs {
        let mut args = GlobalArgs::default();
        let table: toml::Table = OPTIONS
            .iter()
            .map(|o| {
                let value = match o.name {
                    "output" | "log-format" => toml::Value::String("json".into()),
                    "log-level" => toml::Value::String("debug".into()),
                    "wal-maps" => toml::Value::String("on".into()),
                    "block-map-check" => toml::Value::String("all".into()),
                    "pg-port" | "primary-port" | "jobs" | "compress-level" | "s3-retry-seconds"
                    | "retain-full" | "retain-diff" | "retain-full-days" | "memory-budget"
                    | "repo-read-ahead" | "s3-timeout" => toml::Value::Integer(7),
                    _ => toml::Value::String(format!("value-of-{}", o.name)),
                };
                (o.name.to_string(), value)
            })
            .collect();
        args.fill_unset(&table, "test.toml").unwrap();
        args
    }

    #[test]
    fn every_option_has_a_global_flag_named_after_its_field() {
        let cmd = <Cli as clap::CommandFactory>::command();
        for o in OPTIONS {
            assert_eq!(o.name, o.field.replace('_', "-"), "{}", o.field);
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(o.name))
                .unwrap_or_else(|| panic!("no --{}", o.name));
            assert!(arg.is_global_set(), "--{} is not global", o.name);
            assert_eq!(
                arg.get_env().map(|e| e.to_str().unwrap()),
                o.env.for_clap(),
                "--{}",
                o.name
            );
            assert_eq!(arg.is_hide_env_values_set(), o.has(SECRET), "--{}", o.name);
        }
        // And no global flag outside the table.
        for arg in cmd.get_arguments().filter(|a| a.is_global_set()) {
            let long = arg.get_long().unwrap();
            assert!(
                OPTIONS.iter().any(|o| o.name == long),
                "--{long} not in OPTIONS"
            );
        }
    }

    #[test]
    fn every_option_has_a_pgward_env_name_unless_postgresql_names_it() {
        for o in OPTIONS {
            match o.env {
                Env::Pgward(name) => assert_eq!(
                    name,
                    format!("PGWARD_{}", o.field.to_uppercase()),
                    "--{}",
                    o.name
                ),
                Env::Postgres(name) | Env::Libpq(name) => {
                    assert!(
                        name.starts_with("PG") && !name.starts_with("PGWARD_"),
                        "{name}"
                    );
                    assert!(!o.has(SECRET), "a secret must be read by clap");
                }
            }
        }
    }

    #[test]
    fn every_file_option_is_read_from_the_configuration_file() {
        let args = every_option_set();
        for (spec, value) in args.values() {
            assert!(value.is_some(), "--{} not filled", spec.name);
        }
        assert_eq!(args.jobs, Some(7));
        assert_eq!(args.s3_ca_file, Some(PathBuf::from("value-of-s3-ca-file")));
        let keys: Vec<_> = GlobalArgs::file_keys().collect();
        assert!(keys.contains(&"s3-retry-seconds") && keys.contains(&"cipher-pass"));
        assert!(!keys.contains(&"config") && !keys.contains(&"output"));
    }

    #[test]
    fn file_values_of_the_wrong_type_or_range_are_named_errors() {
        let mut args = GlobalArgs::default();
        let t: toml::Table = "jobs = \"four\"".parse().unwrap();
        let e = args.fill_unset(&t, "f.toml").unwrap_err().to_string();
        assert!(e.contains("f.toml: jobs must be a number"), "{e}");
        let t: toml::Table = "pg-port = 70000".parse().unwrap();
        let e = args.fill_unset(&t, "f.toml").unwrap_err().to_string();
        assert!(e.contains("f.toml: pg-port is out of range"), "{e}");
        let t: toml::Table = "repo = 3".parse().unwrap();
        let e = args.fill_unset(&t, "f.toml").unwrap_err().to_string();
        assert!(e.contains("f.toml: repo must be a string"), "{e}");
        let t: toml::Table = "log-level = \"loud\"".parse().unwrap();
        let e = args.fill_unset(&t, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "f.toml: log-level must be one of error, warn, info, debug, trace, found \"loud\""
            ),
            "{e}"
        );
    }

    #[test]
    fn no_secret_is_repeated_in_generated_commands() {
        for o in OPTIONS.iter().filter(|o| o.has(SECRET)) {
            assert!(!o.has(COMMAND), "--{} is secret", o.name);
        }
    }

    #[test]
    fn background_args_hold_every_marked_option_and_no_secret() {
        let args = every_option_set();
        for prop in [COMMAND, WORKER] {
            let bg = args.invocation(prop);
            for o in OPTIONS {
                let flag = format!("--{}", o.name);
                let on_line = bg.args.contains(&flag);
                let in_env = bg.env.iter().any(|(k, _)| k == o.env.name());
                assert_eq!(on_line, o.has(prop) && !o.has(SECRET), "{flag}");
                assert_eq!(in_env, o.has(prop) && o.has(SECRET), "{flag}");
                if o.has(SECRET) {
                    let value = format!("value-of-{}", o.name);
                    assert!(!bg.args.contains(&value), "{flag}'s value on the line");
                }
            }
        }
        let command = args.invocation(COMMAND).args;
        for flag in [
            "--s3-ca-file",
            "--s3-retry-seconds",
            "--cipher-pass-file",
            "--repo",
        ] {
            assert!(command.iter().any(|a| a == flag), "{flag} missing");
        }
    }
}

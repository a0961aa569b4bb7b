//! `settings!`: the one declaration of every setting, and what is generated
//! from it.
//!
//! Each setting is written once, as
//!
//! ```text
//! /// Doc line (the flag's help and README's meaning).
//! name: Kind [lo, hi] => server.path.to.field;   // default: the field's own
//! name: Kind [lo, hi] = default_expression;      // no subsystem holds it
//! ```
//!
//! inside a group (README's sections). From `name` come the flag
//! (`--name` with dashes), the variable (`KUBEMUX_NAME`) and the file key
//! (`name`); from the kind and range, parsing, checking and printing. A
//! setting that lands in a subsystem's configuration ([`Targets`]) takes its
//! default from that subsystem's `Default`, so no default is written twice.
//! The macro generates [`Settings`](super::Settings) and its `Default`,
//! [`ProxyArgs`](super::ProxyArgs) and its clap flags, the layering of
//! flags over the file over defaults, the TOML printer, the landing in
//! [`Targets`] and the reference README quotes.

use clap::Arg;

use super::ConfigError;
use super::kind::{Kind, Range, raw};
use crate::hub::HubConfig;
use crate::server::ServerConfig;

/// The configurations settings land in; their `Default`s are the settings'
/// defaults.
#[derive(Default)]
pub struct Targets {
    /// The server's (connections and dialects).
    pub server: ServerConfig,
    /// The hub's (shared watches).
    pub hub: HubConfig,
}

/// One setting as `--help` and README describe it.
#[derive(Clone, Debug)]
pub struct Described {
    /// README's section.
    pub group: &'static str,
    /// The file key.
    pub name: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// The default as shown.
    pub default: String,
    /// The accepted range or choices, when the doc line does not say it.
    pub accepted: Option<String>,
}

impl Described {
    pub(super) fn new<K: Kind>(
        group: &'static str,
        name: &'static str,
        doc: &'static str,
        default: &K::Value,
        range: &Range,
    ) -> Described {
        Described {
            group,
            name,
            doc: doc.trim(),
            default: K::show(default),
            accepted: K::SHOWS_ACCEPTED.then(|| K::accepted(range)),
        }
    }

    /// `max-message-size`, the flag without its dashes.
    fn long(&self) -> String {
        self.name.replace('_', "-")
    }

    /// `--max-message-size`.
    pub fn flag(&self) -> String {
        format!("--{}", self.long())
    }

    /// `KUBEMUX_MAX_MESSAGE_SIZE`.
    pub fn env(&self) -> String {
        format!("KUBEMUX_{}", self.name.to_uppercase())
    }

    /// The flag, reading its variable too, with the help line.
    pub(super) fn arg<K: Kind>(&self) -> Arg {
        let accepted = self
            .accepted
            .as_ref()
            .map(|a| format!(" Accepted: {a}."))
            .unwrap_or_default();
        let help = format!("{}{accepted} [default: {}]", self.doc, self.default);
        K::arg(
            Arg::new(self.name)
                .long(self.long())
                .env(self.env())
                .value_name(self.name.to_uppercase())
                .help(help),
        )
    }
}

/// A setting's value: the flag (or variable), else the file's, else the
/// default; then checked.
pub(super) fn resolve<K: Kind>(
    setting: &'static str,
    flag: Option<K::Value>,
    file: Option<toml::Value>,
    default: K::Value,
    range: &Range,
) -> Result<K::Value, ConfigError> {
    let value = match (flag, file) {
        (Some(v), _) => v,
        (None, Some(written)) => {
            K::from_file(&written, range).map_err(|accepted| ConfigError::Invalid {
                setting,
                value: raw(&written),
                accepted,
            })?
        }
        (None, None) => default,
    };
    K::check(&value, range).map_err(|value| ConfigError::Invalid {
        setting,
        value,
        accepted: K::accepted(range),
    })?;
    Ok(value)
}

/// The range of a setting: `[lo, hi]` or `[0 "meaning of zero", hi]`.
macro_rules! range {
    () => {
        $crate::config::kind::Range::ANY
    };
    ([$lo:tt, $($hi:tt)+]) => {
        $crate::config::kind::Range { lo: $lo, hi: $($hi)+, zero: None }
    };
    ([$lo:tt $zero:literal, $($hi:tt)+]) => {
        $crate::config::kind::Range { lo: $lo, hi: $($hi)+, zero: Some($zero) }
    };
}

/// A setting's default: its own, or its target's.
macro_rules! default_of {
    ($targets:ident [] [$root:ident $(. $field:ident)+] $kind:ty) => {
        <$kind as $crate::config::kind::Land<_>>::read(&$targets.$root$(.$field)+)
    };
    ($targets:ident [$default:expr] [] $kind:ty) => {
        $default
    };
}

macro_rules! settings {
    ($(
        $group:literal {$(
            $(#[doc = $doc:literal])+
            $name:ident : $kind:ty
            $([$($range:tt)+])?
            $(= $default:expr)?
            $(=> $root:ident $(. $field:ident)+)?
            ;
        )*}
    )*) => {
        /// The effective settings of the proxy.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {$($(
            $(#[doc = $doc])+
            pub $name: <$kind as $crate::config::kind::Kind>::Value,
        )*)*}

        impl Default for Settings {
            fn default() -> Self {
                let targets = $crate::config::declare::Targets::default();
                Settings {$($(
                    $name: $crate::config::declare::default_of!(
                        targets [$($default)?] [$($root $(.$field)+)?] $kind
                    ),
                )*)*}
            }
        }

        /// Flags (and their environment variables) shared by `serve`,
        /// `config` and `demo`. Every value is optional here, so "not
        /// given" is visible; [`Settings::resolve`] layers them over the
        /// file and the defaults.
        #[derive(Clone, Debug, Default)]
        pub struct ProxyArgs {
            /// TOML config file; flags and KUBEMUX_* variables override its values.
            pub config: Option<std::path::PathBuf>,
            $($(
                $(#[doc = $doc])+
                pub $name: Option<<$kind as $crate::config::kind::Kind>::Value>,
            )*)*
        }

        impl clap::Args for ProxyArgs {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                let cmd = cmd.arg(
                    clap::Arg::new("config")
                        .long("config")
                        .env("KUBEMUX_CONFIG")
                        .value_parser(clap::value_parser!(std::path::PathBuf))
                        .help("TOML config file; flags and KUBEMUX_* variables override its values"),
                );
                let flags: &[fn(&$crate::config::declare::Described) -> clap::Arg] =
                    &[$($($crate::config::declare::Described::arg::<$kind>,)*)*];
                let described = Settings::described();
                cmd.args(described.iter().zip(flags).map(|(setting, flag)| flag(setting)))
            }
            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }

        impl clap::FromArgMatches for ProxyArgs {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok(ProxyArgs {
                    config: matches.get_one::<std::path::PathBuf>("config").cloned(),
                    $($(
                        $name: <$kind as $crate::config::kind::Kind>::from_matches(
                            matches,
                            stringify!($name),
                        ),
                    )*)*
                })
            }
            fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(matches)?;
                Ok(())
            }
        }

        impl Settings {
            /// Every setting's file key.
            const NAMES: &[&str] = &[$($(stringify!($name),)*)*];

            /// `args` over `file` over `defaults`, each value checked.
            fn layer_values(
                args: &ProxyArgs,
                mut file: toml::Table,
                defaults: Settings,
            ) -> Result<Settings, ConfigError> {
                Ok(Settings {$($(
                    $name: $crate::config::declare::resolve::<$kind>(
                        stringify!($name),
                        args.$name.clone(),
                        file.remove(stringify!($name)),
                        defaults.$name,
                        &$crate::config::declare::range!($([$($range)+])?),
                    )?,
                )*)*})
            }

            /// The settings as a TOML document, in the config file's own
            /// format, a comment line heading each group.
            pub fn to_toml(&self) -> String {
                let mut out = String::new();
                $(
                    out.push_str(&format!("# {}\n", $group));
                    $(
                        if let Some(value) = <$kind as $crate::config::kind::Kind>::to_toml(&self.$name) {
                            out.push_str(&format!("{} = {value}\n", stringify!($name)));
                        }
                    )*
                )*
                out
            }

            /// Sets the fields of `targets` that settings land in.
            fn land(&self, targets: &mut $crate::config::declare::Targets) {
                $($($(
                    targets.$root$(.$field)+ =
                        <$kind as $crate::config::kind::Land<_>>::land(&self.$name);
                )?)*)*
            }

            /// Every setting, in declaration order, as `--help` and README
            /// describe it (with the built-in defaults).
            pub fn described() -> Vec<$crate::config::declare::Described> {
                let defaults = Settings::default();
                vec![$($(
                    $crate::config::declare::Described::new::<$kind>(
                        $group,
                        stringify!($name),
                        concat!($($doc),+),
                        &defaults.$name,
                        &$crate::config::declare::range!($([$($range)+])?),
                    ),
                )*)*]
            }
        }
    };
}

pub(crate) use {default_of, range, settings};

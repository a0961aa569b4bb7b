//! The kinds of value a setting can have: how each is read from a flag or
//! `KUBEMUX_…` variable (clap) and from the TOML file, checked against the
//! setting's range, printed back as TOML and shown in `--help` and README.
//!
//! A kind also says how its value lands in the subsystem that uses it
//! ([`Land`]): a count is a `usize` bound there, a rate an `f64`, a
//! zero idle timeout `None`. The same conversion, read backwards, gives the
//! setting its default from the subsystem's own `Default`.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, ArgMatches, ValueEnum};
use toml::Value;

use crate::ws::forwarded::TrustedProxies;

/// A setting's accepted range, for the kinds that have one (counts and
/// byte sizes in their unit, durations in seconds), and what zero means
/// when it means something special.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Smallest accepted value.
    pub lo: u64,
    /// Largest accepted value.
    pub hi: u64,
    /// What zero stands for (`never`, `no budget`), shown with the range.
    pub zero: Option<&'static str>,
}

impl Range {
    /// No bounds.
    pub const ANY: Range = Range {
        lo: 0,
        hi: u64::MAX,
        zero: None,
    };

    fn contains(&self, n: u64) -> bool {
        (self.lo..=self.hi).contains(&n)
    }

    /// `1 to 100000`, `0 (never) to 24h`, `0 (no budget) or more`, each
    /// bound written by `show`.
    fn describe(&self, show: impl Fn(u64) -> String) -> String {
        let lo = match self.zero.filter(|_| self.lo == 0) {
            Some(meaning) => format!("{} ({meaning})", show(0)),
            None => show(self.lo),
        };
        if self.hi == u64::MAX {
            format!("{lo} or more")
        } else {
            format!("{lo} to {}", show(self.hi))
        }
    }
}

/// The kind of a setting's value.
pub trait Kind: 'static {
    /// The value as the effective settings hold it.
    type Value: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static;

    /// Whether [`Kind::accepted`] is worth showing in `--help` and README
    /// (a range, a list of choices), beyond what the doc line says.
    const SHOWS_ACCEPTED: bool = false;

    /// How values are written, added to [`Kind::accepted`] when a file's
    /// value cannot be read (empty: nothing to add).
    const WRITTEN: &'static str = "";

    /// Reads a value as a flag, a variable or a string in the file writes it.
    fn parse(text: &str) -> Result<Self::Value, String>;

    /// How clap reads the flag and its environment variable.
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(Self::parse)
    }

    /// The flag's (or variable's) value, when one was given.
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self::Value> {
        matches.get_one::<Self::Value>(id).cloned()
    }

    /// A value of the config file; the error says what is accepted.
    fn from_file(value: &Value, range: &Range) -> Result<Self::Value, String> {
        value
            .as_str()
            .and_then(|text| Self::parse(text).ok())
            .ok_or_else(|| unreadable::<Self>(range))
    }

    /// `Err` (the offending value, as shown in the error) when `value` is
    /// not accepted although it parsed, e.g. out of its range.
    fn check(_value: &Self::Value, _range: &Range) -> Result<(), String> {
        Ok(())
    }

    /// What is accepted, for kinds without a range.
    const ACCEPTED: &'static str = "";

    /// What is accepted, for error messages.
    fn accepted(_range: &Range) -> String {
        Self::ACCEPTED.into()
    }

    /// The value as a TOML value; `None` leaves an unset optional setting
    /// out.
    fn to_toml(value: &Self::Value) -> Option<String>;

    /// The value as `--help` and README show a default.
    fn show(value: &Self::Value) -> String;
}

/// What is accepted, and how it is written, for a file's value that could
/// not be read.
fn unreadable<K: Kind + ?Sized>(range: &Range) -> String {
    match K::WRITTEN {
        "" => K::accepted(range),
        written => format!("{}, written as {written}", K::accepted(range)),
    }
}

/// How a setting's value lands in the subsystem's configuration field of
/// type `P`, and back (the subsystem's default as the setting's).
pub trait Land<P>: Kind {
    /// The field's value for the setting's.
    fn land(value: &Self::Value) -> P;
    /// The setting's value for the field's.
    fn read(field: &P) -> Self::Value;
}

macro_rules! land {
    ($kind:ty : $field:ty, |$v:ident| $land:expr, |$f:ident| $read:expr) => {
        impl Land<$field> for $kind {
            fn land($v: &Self::Value) -> $field {
                $land
            }
            fn read($f: &$field) -> Self::Value {
                $read
            }
        }
    };
}

/// A file's value as an error shows it: a string without TOML's quotes, a
/// number as written, anything else by its type.
pub fn raw(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => format!("(a TOML {})", other.type_str()),
    }
}

/// `text` as a TOML basic string: quoted, with `"`, `\\` and control
/// characters escaped as TOML escapes them (Rust's `{:?}` escapes differ).
fn quoted(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` read by the type's own `FromStr`.
fn parsed<T: FromStr<Err: std::fmt::Display>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e: T::Err| e.to_string())
}

/// A socket address.
pub struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;
    const ACCEPTED: &'static str = "an address like 127.0.0.1:4466";
    fn parse(text: &str) -> Result<SocketAddr, String> {
        parsed(text)
    }
    fn to_toml(value: &SocketAddr) -> Option<String> {
        Some(format!("\"{value}\""))
    }
    fn show(value: &SocketAddr) -> String {
        value.to_string()
    }
}

land!(Addr: SocketAddr, |v| *v, |f| *f);

/// An optional socket address (an extra listener): off unless set.
pub struct OptAddr;

impl Kind for OptAddr {
    type Value = Option<SocketAddr>;
    fn parse(text: &str) -> Result<Self::Value, String> {
        Addr::parse(text).map(Some)
    }
    fn accepted(range: &Range) -> String {
        Addr::accepted(range)
    }
    fn to_toml(value: &Self::Value) -> Option<String> {
        value.as_ref().and_then(Addr::to_toml)
    }
    fn show(value: &Self::Value) -> String {
        value.map_or_else(|| "off".into(), |a| a.to_string())
    }
}

land!(OptAddr: Option<SocketAddr>, |v| *v, |f| *f);

/// Parses `30s`, `2m`, `500ms` and the like.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 2m, 500ms)"))
}

/// A duration in its largest whole unit (`24h`, `10m`, `150s`, `500ms`),
/// which [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    let ms = d.as_millis();
    let units = [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")];
    match units.iter().find(|(unit, _)| ms.is_multiple_of(*unit)) {
        Some((unit, name)) if ms != 0 => format!("{}{name}", ms / unit),
        _ => "0s".into(),
    }
}

/// A duration; its range is in whole seconds.
pub struct Dur;

impl Kind for Dur {
    type Value = Duration;
    const SHOWS_ACCEPTED: bool = true;
    const WRITTEN: &'static str = "a number and a unit: 500ms, 30s, 2m, 1h";
    fn parse(text: &str) -> Result<Duration, String> {
        parse_duration(text)
    }
    fn check(value: &Duration, range: &Range) -> Result<(), String> {
        let lo = Duration::from_secs(range.lo);
        let hi = Duration::from_secs(range.hi);
        if (lo..=hi).contains(value) {
            Ok(())
        } else {
            Err(format_duration(*value))
        }
    }
    fn accepted(range: &Range) -> String {
        range.describe(|s| format_duration(Duration::from_secs(s)))
    }
    fn to_toml(value: &Duration) -> Option<String> {
        Some(format!("\"{}\"", format_duration(*value)))
    }
    fn show(value: &Duration) -> String {
        format_duration(*value)
    }
}

land!(Dur: Duration, |v| *v, |f| *f);
land!(Dur: Option<Duration>, |v| Some(*v).filter(|d| !d.is_zero()), |f| f.unwrap_or_default());

/// How byte sizes may be written, for error messages.
const BYTE_FORMS: &str = "a whole number of bytes, optionally with a binary unit: 4096, 64KiB, 8 MiB, 2G (B, K/KiB, M/MiB, G/GiB, T/TiB)";

/// Parses a byte size as README writes them (`8 MiB`, `64KiB`, `2G`,
/// `4096`): a whole number, optional spaces, an optional binary unit. Decimal
/// units (`MB`) are refused rather than guessed at, since `8MB` as 8,000,000
/// or 8,388,608 would both surprise someone.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(format!("{s:?} is not a size: expected {BYTE_FORMS}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected {BYTE_FORMS}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large: at most {} bytes", u64::MAX))
}

/// `64 KiB`, `2 GiB`: the largest binary unit the size is a whole number
/// of (a plain number when none is), as [`parse_byte_size`] reads it.
fn format_bytes(n: u64) -> String {
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    units
        .iter()
        .find(|(shift, _)| n != 0 && n.is_multiple_of(1 << shift))
        .map_or_else(
            || n.to_string(),
            |(shift, unit)| format!("{} {unit}", n >> shift),
        )
}

/// A byte size: a TOML integer or a string with a binary unit.
pub struct Bytes;

impl Kind for Bytes {
    type Value = u64;
    const SHOWS_ACCEPTED: bool = true;
    const WRITTEN: &'static str = BYTE_FORMS;
    fn parse(text: &str) -> Result<u64, String> {
        parse_byte_size(text)
    }
    fn from_file(value: &Value, range: &Range) -> Result<u64, String> {
        match value {
            Value::Integer(n) => u64::try_from(*n).ok(),
            Value::String(s) => parse_byte_size(s).ok(),
            _ => None,
        }
        .ok_or_else(|| unreadable::<Self>(range))
    }
    fn check(value: &u64, range: &Range) -> Result<(), String> {
        range
            .contains(*value)
            .then_some(())
            .ok_or_else(|| value.to_string())
    }
    fn accepted(range: &Range) -> String {
        let bytes = range.describe(|n| n.to_string());
        if range.hi == u64::MAX {
            format!("{bytes} bytes")
        } else {
            let (lo, hi) = (format_bytes(range.lo), format_bytes(range.hi));
            format!("{bytes} bytes ({lo} to {hi})")
        }
    }
    fn to_toml(value: &u64) -> Option<String> {
        Some(value.to_string())
    }
    fn show(value: &u64) -> String {
        format_bytes(*value)
    }
}

land!(Bytes: u64, |v| *v, |f| *f);
land!(Bytes: usize, |v| usize::try_from(*v).unwrap_or(usize::MAX), |f| *f as u64);

/// A whole number: a count, or a rate per second.
pub struct Count;

impl Kind for Count {
    type Value = u64;
    const SHOWS_ACCEPTED: bool = true;
    fn parse(text: &str) -> Result<u64, String> {
        parsed(text)
    }
    fn from_file(value: &Value, range: &Range) -> Result<u64, String> {
        value
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| Self::accepted(range))
    }
    fn check(value: &u64, range: &Range) -> Result<(), String> {
        Bytes::check(value, range)
    }
    fn accepted(range: &Range) -> String {
        range.describe(|n| n.to_string())
    }
    fn to_toml(value: &u64) -> Option<String> {
        Some(value.to_string())
    }
    fn show(value: &u64) -> String {
        value.to_string()
    }
}

land!(Count: usize, |v| usize::try_from(*v).unwrap_or(usize::MAX), |f| *f as u64);
land!(Count: f64, |v| *v as f64, |f| f.round() as u64);

/// A rate per minute (as seed 001 states its own), landing as a rate per
/// second.
pub struct PerMinute;

impl Kind for PerMinute {
    type Value = u64;
    const SHOWS_ACCEPTED: bool = true;
    fn parse(text: &str) -> Result<u64, String> {
        Count::parse(text)
    }
    fn from_file(value: &Value, range: &Range) -> Result<u64, String> {
        Count::from_file(value, range).map_err(|_| Self::accepted(range))
    }
    fn check(value: &u64, range: &Range) -> Result<(), String> {
        Count::check(value, range)
    }
    fn accepted(range: &Range) -> String {
        format!("{} per minute", Count::accepted(range))
    }
    fn to_toml(value: &u64) -> Option<String> {
        Count::to_toml(value)
    }
    fn show(value: &u64) -> String {
        format!("{value}/min")
    }
}

land!(PerMinute: f64, |v| *v as f64 / 60.0, |f| (f * 60.0).round() as u64);

/// On or off; a flag without a value (`--allow-secrets`), so only the file
/// can say `false`, and a flag given turns it on whatever the file says.
pub struct Flag;

impl Kind for Flag {
    type Value = bool;
    const ACCEPTED: &'static str = "true or false";
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue).value_parser(Self::parse)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<bool> {
        matches.get_flag(id).then_some(true)
    }
    /// The variable's value (`KUBEMUX_ALLOW_SECRETS=true`).
    fn parse(text: &str) -> Result<bool, String> {
        parsed(text)
    }
    fn from_file(value: &Value, range: &Range) -> Result<bool, String> {
        value.as_bool().ok_or_else(|| Self::accepted(range))
    }
    fn to_toml(value: &bool) -> Option<String> {
        Some(value.to_string())
    }
    fn show(value: &bool) -> String {
        if *value { "on" } else { "off" }.into()
    }
}

land!(Flag: bool, |v| *v, |f| *f);

/// One of an enum's values, spelled as clap spells them.
pub struct Choice<T>(PhantomData<T>);

impl<T> Choice<T>
where
    T: ValueEnum,
{
    fn name(value: &T) -> String {
        value
            .to_possible_value()
            .as_ref()
            .map_or_else(String::new, |p| p.get_name().to_string())
    }
}

impl<T> Kind for Choice<T>
where
    T: ValueEnum + PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    type Value = T;
    const SHOWS_ACCEPTED: bool = true;
    fn parse(text: &str) -> Result<T, String> {
        T::from_str(text, false)
    }
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(clap::builder::EnumValueParser::<T>::new())
    }
    fn accepted(_: &Range) -> String {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(T::to_possible_value)
            .map(|p: PossibleValue| p.get_name().to_string())
            .collect();
        names.join(", ")
    }
    fn to_toml(value: &T) -> Option<String> {
        Some(format!("\"{}\"", Self::name(value)))
    }
    fn show(value: &T) -> String {
        Self::name(value)
    }
}

/// A non-empty string (a JWT claim's name).
pub struct Claim;

impl Kind for Claim {
    type Value = String;
    const ACCEPTED: &'static str = "a non-empty claim name";
    fn parse(text: &str) -> Result<String, String> {
        Ok(text.to_string())
    }
    fn check(value: &String, _: &Range) -> Result<(), String> {
        if value.is_empty() {
            Err(String::new())
        } else {
            Ok(())
        }
    }
    fn to_toml(value: &String) -> Option<String> {
        Some(quoted(value))
    }
    fn show(value: &String) -> String {
        value.clone()
    }
}

/// An optional string: not checked unless set.
pub struct OptText;

impl Kind for OptText {
    type Value = Option<String>;
    const ACCEPTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self::Value, String> {
        Ok(Some(text.to_string()))
    }
    fn to_toml(value: &Self::Value) -> Option<String> {
        value.as_deref().map(quoted)
    }
    fn show(value: &Self::Value) -> String {
        value.clone().unwrap_or_else(|| "not checked".into())
    }
}

/// An optional file.
pub struct OptPath;

impl Kind for OptPath {
    type Value = Option<PathBuf>;
    const ACCEPTED: &'static str = "a file path";
    fn parse(text: &str) -> Result<Self::Value, String> {
        Ok(Some(PathBuf::from(text)))
    }
    fn to_toml(value: &Self::Value) -> Option<String> {
        value.as_ref().map(|p| quoted(&p.display().to_string()))
    }
    fn show(value: &Self::Value) -> String {
        value
            .as_ref()
            .map_or_else(|| "none".into(), |p| p.display().to_string())
    }
}

/// A list of strings: comma-separated in a flag (which may be repeated), a
/// TOML array in the file.
pub struct List;

impl Kind for List {
    type Value = Vec<String>;
    const ACCEPTED: &'static str = "a list of strings";
    fn parse(text: &str) -> Result<Vec<String>, String> {
        Ok(text.split(',').map(str::to_string).collect())
    }
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Append).value_parser(Self::parse)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Vec<String>> {
        matches
            .get_many::<Vec<String>>(id)
            .map(|given| given.flatten().cloned().collect())
    }
    fn from_file(value: &Value, range: &Range) -> Result<Vec<String>, String> {
        value
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| Self::accepted(range))
    }
    fn to_toml(value: &Vec<String>) -> Option<String> {
        let items: Vec<String> = value.iter().map(|v| quoted(v)).collect();
        Some(format!("[{}]", items.join(", ")))
    }
    fn show(value: &Vec<String>) -> String {
        if value.is_empty() {
            "none".into()
        } else {
            value.join(",")
        }
    }
}

/// Addresses or blocks of reverse proxies, trimmed, empty items dropped.
pub struct Proxies;

impl Proxies {
    fn trimmed(blocks: Vec<String>) -> Vec<String> {
        blocks
            .iter()
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect()
    }
}

impl Kind for Proxies {
    type Value = Vec<String>;
    const ACCEPTED: &'static str = "addresses or blocks like 10.0.0.0/8, 127.0.0.1, fd00::/8";
    fn parse(text: &str) -> Result<Vec<String>, String> {
        List::parse(text).map(Self::trimmed)
    }
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Append).value_parser(Self::parse)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Vec<String>> {
        List::from_matches(matches, id)
    }
    fn from_file(value: &Value, range: &Range) -> Result<Vec<String>, String> {
        List::from_file(value, range)
            .map(Self::trimmed)
            .map_err(|_| Self::accepted(range))
    }
    fn check(value: &Vec<String>, _: &Range) -> Result<(), String> {
        TrustedProxies::parse(value).map(drop).map_err(|bad| bad.0)
    }
    fn to_toml(value: &Vec<String>) -> Option<String> {
        List::to_toml(value)
    }
    fn show(value: &Vec<String>) -> String {
        List::show(value)
    }
}

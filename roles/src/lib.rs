//! Pylon's roles: what a node does with the libp2p stack of `pylon-node` — whom it
//! admits, serves and sheds. One module per role; a role is on when its section
//! `[roles.NAME]` is present (or with `--role NAME`).
//!
//! A role implements [`Role`]: it owns its section (a serde struct whose `Default` is the
//! one place its defaults are written), states what it needs from the node
//! ([`Role::require`], applied to the node's config before the node starts), starts
//! itself on the running node with its metrics in its own sub-registry (`pylon_NAME_*`),
//! and shows a read-only [`Role::status`]. The binary knows roles only through [`all`]:
//! adding a role is a module here plus one line in that list.
//!
//! Not here: the node's own sections and the merging of config sources (the binary), the
//! mechanism the roles use (`pylon-node`).

pub mod autonat;
pub mod booster;
pub mod bootstrap;
pub mod config;
pub mod relay;

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use pylon_node::node::{self, Node};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Every role, in the order they are configured and started. Adding a role: its module
/// (above) and one line here.
static ALL: &[&dyn DynRole] = &[
    &Registered::<bootstrap::Bootstrap>::ROLE,
    &Registered::<relay::Relay>::ROLE,
    &Registered::<autonat::AutoNat>::ROLE,
    &Registered::<booster::Booster>::ROLE,
];

/// Every role the binary knows, in the order they are configured and started.
pub fn all() -> &'static [&'static dyn DynRole] {
    ALL
}

/// The role named `name`.
pub fn find(name: &str) -> Option<&'static dyn DynRole> {
    ALL.iter().copied().find(|r| r.name() == name)
}

/// A role: policy and composition over the node, on when `[roles.NAME]` is present.
///
/// The implementing type is the running role ([`Role::start`] returns it).
pub trait Role: Send + Sync + Sized + 'static {
    /// The name in `--role NAME`, `[roles.NAME]` and the metrics' prefix `pylon_NAME_`
    /// (lowercase letters, digits and `_`).
    const NAME: &'static str;
    /// The section `[roles.NAME]`: `#[serde(deny_unknown_fields, default)]`, so its
    /// `Default` is the one place the defaults are written (default.toml and README.md
    /// are tested against it). Durations: [`config::serde_duration`].
    type Config: Serialize + DeserializeOwned + Default + Clone + fmt::Debug + Send + Sync;
    /// The read-only view the admin API lists.
    type Status: Serialize;
    /// Why the role could not start.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks what serde cannot (ranges); errors name the key, `roles.NAME.key`.
    fn check(config: &Self::Config) -> Result<(), config::Error> {
        let _ = config;
        Ok(())
    }

    /// What the role needs from the node, written into the node's config before it
    /// starts (which protocols, in which mode, which limits). An error names the key
    /// that conflicts.
    fn require(config: &Self::Config, node: &mut node::Config) -> Result<(), config::Error>;

    /// Starts the role on the running node, its metrics registered through `metrics`
    /// ([`Metrics::own`]: a metric registered as `shed_connections` is exported as
    /// `pylon_NAME_shed_connections_total`).
    fn start(
        node: &Node,
        config: Self::Config,
        metrics: &mut Metrics<'_>,
    ) -> Result<Arc<Self>, Self::Error>;

    /// What the running role is doing.
    fn status(&self) -> Self::Status;

    /// The protocols whose inbound streams are this role's requests (what the web
    /// dashboard charts as the role's requests, from `libp2p_swarm_streams_opened_total`);
    /// none by default.
    fn protocols(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The role's own metrics registry under `registry`: prefix `pylon_NAME`.
pub fn metrics_registry<R: Role>(registry: &mut Registry) -> &mut Registry {
    registry.sub_registry_with_prefix(format!("pylon_{}", R::NAME))
}

/// Where a role registers its metrics: its own families under `pylon_NAME_*`
/// ([`Metrics::own`]), and the families of go-libp2p's it reproduces under their standard
/// prefix ([`Metrics::standard`], e.g. `libp2p_relaysvc`), so go-libp2p's published
/// dashboards read them unchanged.
pub struct Metrics<'a> {
    root: &'a mut Registry,
    name: &'static str,
}

impl<'a> Metrics<'a> {
    /// Metrics of the role `R`, registered in `root`.
    pub fn of<R: Role>(root: &'a mut Registry) -> Self {
        Metrics {
            root,
            name: R::NAME,
        }
    }

    /// The role's own sub-registry: prefix `pylon_NAME`.
    pub fn own(&mut self) -> &mut Registry {
        self.root
            .sub_registry_with_prefix(format!("pylon_{}", self.name))
    }

    /// A sub-registry with a standard prefix (`libp2p_relaysvc`).
    pub fn standard(&mut self, prefix: &str) -> &mut Registry {
        self.root.sub_registry_with_prefix(prefix)
    }
}

/// Why a role did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("role {role} did not start")]
    Start {
        role: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A role as the binary sees it, its config not yet read: what [`all`] lists.
pub trait DynRole: Sync {
    fn name(&self) -> &'static str;
    /// Reads and checks `[roles.NAME]`; an empty table means every default.
    fn configure(&self, section: &toml::Value) -> Result<Configured, config::Error>;
    /// The section with every default, as written in TOML.
    fn defaults(&self) -> toml::Table;
}

/// Reads the `[roles]` table: each section checked by its role, in the order of [`all`].
/// A name no role has is refused with the list of those there are.
pub fn configure(roles: &toml::Table) -> Result<Vec<Configured>, config::Error> {
    if let Some(unknown) = roles.keys().find(|name| find(name).is_none()) {
        let known: Vec<&str> = ALL.iter().map(|r| r.name()).collect();
        return Err(config::Error::Key {
            key: format!("roles.{unknown}"),
            message: format!("no such role; the roles are: {}", known.join(", ")),
        });
    }
    ALL.iter()
        .filter_map(|role| roles.get(role.name()).map(|s| role.configure(s)))
        .collect()
}

/// A role with its checked section: it can shape the node's config, then start.
#[derive(Clone)]
pub struct Configured(Arc<dyn DynConfigured>);

impl Configured {
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The section, when this is role `R`.
    pub fn config<R: Role>(&self) -> Option<&R::Config> {
        self.0
            .as_any()
            .downcast_ref::<Checked<R>>()
            .map(|c| &c.config)
    }

    /// [`Role::require`].
    pub fn require(&self, node: &mut node::Config) -> Result<(), config::Error> {
        self.0.require(node)
    }

    /// [`Role::start`], its metrics under `registry` with the prefix `pylon_NAME`.
    pub fn start(&self, node: &Node, registry: &mut Registry) -> Result<Running, Error> {
        self.0.start(node, registry)
    }
}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A running role, for listing: its name and status.
#[derive(Clone)]
pub struct Running {
    name: &'static str,
    role: Arc<dyn DynRunning>,
}

impl Running {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// [`Role::status`], as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.role.status()
    }

    /// [`Role::protocols`].
    pub fn protocols(&self) -> Vec<String> {
        self.role.protocols()
    }
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .field("status", &self.status())
            .finish()
    }
}

// ---- The erased forms of a `Role`, made once for every role ---------------------------

struct Registered<R>(PhantomData<fn() -> R>);

impl<R> Registered<R> {
    const ROLE: Self = Registered(PhantomData);
}

impl<R: Role> DynRole for Registered<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn configure(&self, section: &toml::Value) -> Result<Configured, config::Error> {
        let config: R::Config = serde_path_to_error::deserialize(section.clone()).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                format!("roles.{}", R::NAME)
            } else {
                format!("roles.{}.{path}", R::NAME)
            };
            config::Error::Key {
                key,
                message: e.into_inner().message().to_string(),
            }
        })?;
        R::check(&config)?;
        Ok(Configured(Arc::new(Checked::<R> { config })))
    }

    fn defaults(&self) -> toml::Table {
        // A role's Config is a table of plain values; were it not, its own test would
        // show an empty table.
        toml::Table::try_from(R::Config::default()).unwrap_or_default()
    }
}

trait DynConfigured: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn require(&self, node: &mut node::Config) -> Result<(), config::Error>;
    fn start(&self, node: &Node, registry: &mut Registry) -> Result<Running, Error>;
}

struct Checked<R: Role> {
    config: R::Config,
}

impl<R: Role> fmt::Debug for Checked<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(R::NAME).field(&self.config).finish()
    }
}

impl<R: Role> DynConfigured for Checked<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn require(&self, node: &mut node::Config) -> Result<(), config::Error> {
        R::require(&self.config, node)
    }

    fn start(&self, node: &Node, registry: &mut Registry) -> Result<Running, Error> {
        let role =
            R::start(node, self.config.clone(), &mut Metrics::of::<R>(registry)).map_err(|e| {
                Error::Start {
                    role: R::NAME,
                    source: Box::new(e),
                }
            })?;
        Ok(Running {
            name: R::NAME,
            role,
        })
    }
}

trait DynRunning: Send + Sync {
    fn status(&self) -> serde_json::Value;
    fn protocols(&self) -> Vec<String>;
}

impl<R: Role> DynRunning for R {
    fn status(&self) -> serde_json::Value {
        // A status is a struct of plain values: serializing it cannot fail.
        serde_json::to_value(Role::status(self)).unwrap_or_default()
    }

    fn protocols(&self) -> Vec<String> {
        Role::protocols(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn role_names_are_unique_and_fit_metric_names() {
        let mut names: Vec<&str> = all().iter().map(|r| r.name()).collect();
        for name in &names {
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len());
    }

    #[test]
    fn every_role_reads_back_its_own_defaults() {
        for role in all() {
            let defaults = role.defaults();
            assert!(!defaults.is_empty(), "{}", role.name());
            let written = role.configure(&toml::Value::Table(defaults)).unwrap();
            let empty = role
                .configure(&toml::Value::Table(toml::Table::new()))
                .unwrap();
            assert_eq!(
                format!("{written:?}"),
                format!("{empty:?}"),
                "{}",
                role.name()
            );
            // deny_unknown_fields: a typo is an error naming the key.
            let typo: toml::Value = toml::from_str("no_such_key = 1\n").unwrap();
            let e = role.configure(&typo).unwrap_err().to_string();
            assert!(
                e.contains(&format!("roles.{}.no_such_key", role.name())),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_roles_are_refused_with_the_list() {
        let roles: toml::Table = toml::from_str("[lighthouse]\n").unwrap();
        let e = configure(&roles).unwrap_err().to_string();
        assert!(
            e.contains("roles.lighthouse") && e.contains("bootstrap"),
            "{e}"
        );
        let roles: toml::Table = toml::from_str("bootstrap = 1\n").unwrap();
        let e = configure(&roles).unwrap_err().to_string();
        assert!(e.contains("`roles.bootstrap`"), "{e}");
    }
}

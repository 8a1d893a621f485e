//! The composition root: `Config::open` opens the database, the packs
//! directory and the alias and policy files, and builds the engine over
//! them; what `airlock worker` runs with; the catalog the engine reloads
//! from files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Config, open_store};
use crate::action::packs::PackManager;
use crate::action::runners::sandbox::Sandbox;
use crate::action::runners::{PackAction, RunnerConfig};
use crate::action::st2::{St2Action, St2Config};
use crate::action::{Action, Actions, metadata};
use crate::audit::AuditLog;
use crate::diag::Diagnostic;
use crate::engine::{Catalog, Engine, StartError};
use crate::requests::Requests;
use crate::{alias, policy};

impl Config {
    /// The web view's sign-in, when `http.web` is on: a sign-in link
    /// lasts 5 minutes, a session 8 hours.
    fn web(&self, db: &crate::kv::Db) -> Result<Option<crate::engine::Web>, StartError> {
        if !self.http.web {
            return Ok(None);
        }
        let url = self.http.public_url.as_deref().unwrap_or_default();
        let parsed = reqwest::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none()
        });
        if parsed.is_none() {
            return Err(StartError::Web(format!(
                "http.web needs http.public_url, the https:// (or http://) address users reach the listener at; got {url:?}"
            )));
        }
        let access = crate::store::web::WebAccess::open(db)
            .map_err(|e| StartError::Database(self.store_path(), e.to_string()))?;
        Ok(Some(crate::engine::Web {
            access,
            public_url: url.trim_end_matches('/').to_string(),
            link_for: std::time::Duration::from_secs(300),
            session_for: std::time::Duration::from_secs(8 * 3600),
        }))
    }

    /// The composition root: open the database under `data_dir`, the packs
    /// directory, the alias and policy files, and build the engine over
    /// them (`now` stamps what the recovery of the last run records).
    pub fn open(&self, now: u64) -> Result<Opened, StartError> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| StartError::Database(self.data_dir.clone(), e.to_string()))?;
        let db_path = self.store_path();
        let db = open_store(&db_path)
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        self.open_with(db, Arc::new(crate::wall::now_ms), now)
    }

    /// [`Config::open`] over a database already open (the bot's on disk,
    /// or one in memory, [`crate::kv::Db::memory`], as the engine's tests
    /// run) and a clock (the wall clock, or a test's). Sealed audit
    /// segments still go to `data_dir/audit`.
    pub fn open_with(
        &self,
        db: crate::kv::Db,
        clock: crate::engine::Clock,
        now: u64,
    ) -> Result<Opened, StartError> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| StartError::Database(self.data_dir.clone(), e.to_string()))?;
        let db_path = self.store_path();
        let audit = AuditLog::open_at(&db, Some(&self.archive_dir()))
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let requests = Requests::open(&db)
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let packs = PackManager::new(&self.packs, &db, self.git.clone())
            .map_err(|e| StartError::Packs(e.to_string()))?;
        #[cfg(feature = "temporal")]
        let temporal = self
            .temporal
            .clone()
            .map(crate::action::temporal::TemporalClient::new);
        #[cfg(not(feature = "temporal"))]
        if self.temporal.is_some() {
            return Err(StartError::Packs(
                "temporal: in the configuration, but this airlock was built without the temporal feature (cargo build --features temporal)".into(),
            ));
        }
        let mut runners = self
            .runner_config()
            .map_err(|e| StartError::Database(self.data_dir.join("secret.key"), e.to_string()))?;
        if runners.sandbox == Sandbox::Bwrap {
            crate::action::runners::sandbox::check().map_err(StartError::Packs)?;
        }
        // The StackStorm API key is airlock's secret too: no local action
        // sees it.
        if let Some(st2) = &self.st2 {
            runners.secret_env.push(st2.api_key_env.clone());
        }
        let catalog = Arc::new(Files {
            aliases: self.aliases.clone(),
            policies: self.policies.clone(),
            packs: packs.clone(),
            runners: Arc::new(runners),
            st2: self.st2.clone().map(Arc::new),
            #[cfg(feature = "temporal")]
            temporal,
        });
        let notifier: Option<Arc<dyn crate::engine::Notify>> = match &self.notify {
            Some(n) => Some(Arc::new(
                crate::notify::Notifier::start(n).map_err(StartError::Notify)?,
            )),
            None => None,
        };
        let web = self.web(&db)?;
        let engine = Engine::builder(self.settings(), audit, requests, clock)
            .web(web)
            .notifier(notifier)
            .actions(Actions::standard(packs.clone()))
            .catalog(catalog)
            .build(now)?;
        // Every request the last run left open is settled now; what the
        // packs kept to recover them is no longer needed.
        packs.forget_switches(None);
        Ok(Opened { engine, packs })
    }
}

impl Config {
    /// Runner settings as actions get them: the key of the audit's proofs
    /// (`data_dir/secret.key`), and what the sandbox hides.
    fn runner_config(&self) -> std::io::Result<RunnerConfig> {
        let mut runners = self.runners.clone();
        runners.hash_key = secret_key(&self.data_dir)?;
        runners.hidden = vec![self.data_dir.clone(), runners.configs.clone()];
        Ok(runners)
    }
}

#[cfg(feature = "temporal")]
impl Config {
    /// What `airlock worker --task-queue <queue>` runs with: the Temporal
    /// server, runner settings (with this machine's `secret.key` for the
    /// audit's proofs), the pack directories of `aliases:`, and a packs
    /// directory of its own (`data_dir/worker-packs`) that versions are
    /// fetched into by commit. It shares no database with a bot.
    pub fn worker_setup(
        &self,
        queue: &str,
    ) -> Result<crate::action::temporal::worker::WorkerSetup, String> {
        let temporal = self
            .temporal
            .clone()
            .ok_or("the configuration has no temporal: section")?;
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("{}: {e}", self.data_dir.display()))?;
        let runners = self
            .runner_config()
            .map_err(|e| format!("{}: {e}", self.data_dir.join("secret.key").display()))?;
        if runners.sandbox == Sandbox::Bwrap {
            crate::action::runners::sandbox::check()?;
        }
        // Its packs directory needs no records: nothing is switched there.
        let db = crate::store::kv::Db::memory();
        let packs = PackManager::new(&self.data_dir.join("worker-packs"), &db, self.git.clone())
            .map_err(|e| e.to_string())?;
        Ok(crate::action::temporal::worker::WorkerSetup {
            temporal,
            queue: queue.to_string(),
            runners,
            dirs: metadata::pack_dirs(&self.aliases),
            packs,
        })
    }
}

/// What [`Config::open`] builds.
pub struct Opened {
    /// The engine, ready for events.
    pub engine: Engine,
    /// The packs directory it installs into.
    pub packs: Arc<PackManager>,
}

/// The key of the hashes the audit keeps of secret values: 32 random
/// bytes in `data_dir/secret.key` (owner-only), made on first start.
fn secret_key(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join("secret.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {
            return Err(std::io::Error::other(
                "shorter than 32 bytes; remove it to have a new one made",
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let key = crate::store::random_bytes::<32>()?.to_vec();
    crate::store::write_private(&path, &key)?;
    Ok(key)
}

/// Aliases, actions and policy from files: the configured alias
/// directories plus the installed packs whose aliases are registered, the
/// actions of every pack among them and installed, and the policy files.
struct Files {
    aliases: Vec<PathBuf>,
    policies: Vec<PathBuf>,
    packs: Arc<PackManager>,
    runners: Arc<RunnerConfig>,
    st2: Option<Arc<St2Config>>,
    #[cfg(feature = "temporal")]
    temporal: Option<Arc<crate::action::temporal::TemporalClient>>,
}

impl Files {
    /// Every pack directory whose actions are offered, with its name.
    fn pack_dirs(&self) -> Vec<(PathBuf, String)> {
        let mut out = metadata::pack_dirs(&self.aliases);
        for r in self.packs.records() {
            out.push((self.packs.dir().join(&r.name), r.name.clone()));
        }
        out
    }
}

impl Catalog for Files {
    fn aliases(&self) -> alias::load::Loaded {
        let mut dirs = self.aliases.clone();
        dirs.extend(self.packs.alias_dirs());
        crate::catalog::load_aliases(&dirs)
    }

    fn policy(&self) -> policy::LoadedPolicy {
        crate::catalog::load_policy(&self.policies)
    }

    fn actions(&self) -> (Vec<Arc<dyn Action>>, Vec<Diagnostic>) {
        let mut found: Vec<Arc<dyn Action>> = metadata::core_actions()
            .into_iter()
            .map(|m| Arc::new(PackAction::new(m, None, self.runners.clone())) as Arc<dyn Action>)
            .collect();
        let mut diags = Vec::new();
        for (dir, name) in self.pack_dirs() {
            let routed = |r: &str| self.st2.as_ref().is_some_and(|s| s.routes(r));
            let (metas, mut d) = metadata::load_pack(&dir, &name, &routed);
            diags.append(&mut d);
            found.extend(metas.into_iter().map(|m| {
                Arc::new(PackAction::new(m, Some(dir.clone()), self.runners.clone()))
                    as Arc<dyn Action>
            }));
        }
        // What the st2 configuration routes runs there, whatever a local
        // pack says: every alias's action it names.
        if let Some(st2) = &self.st2 {
            found.retain(|a| !st2.routes(&a.spec().reference));
            let mut routed: Vec<String> = self
                .aliases()
                .aliases
                .into_iter()
                .map(|a| a.action_ref)
                .filter(|r| st2.routes(r))
                .collect();
            routed.sort();
            routed.dedup();
            found.extend(
                routed
                    .iter()
                    .map(|r| Arc::new(St2Action::new(r, st2.clone())) as Arc<dyn Action>),
            );
        }
        // What the Temporal configuration routes runs on its workers,
        // prepared here as it would be locally.
        #[cfg(feature = "temporal")]
        if let Some(t) = &self.temporal {
            for a in found.iter_mut() {
                let reference = &a.spec().reference;
                if self.st2.as_ref().is_some_and(|s| s.routes(reference)) {
                    continue;
                }
                if let Some(queue) = t.config().queue_of(reference) {
                    *a = Arc::new(crate::action::temporal::TemporalAction::new(
                        a.clone(),
                        queue,
                        t.clone(),
                        self.packs.clone(),
                    ));
                }
            }
        }
        (found, diags)
    }
}

//! What the packs directory records in the database: each installed
//! pack's versions, and the intents that make a switch of `packs/<name>`
//! recoverable after a crash (the switching itself is
//! `action::packs`'s).

use serde::{Deserialize, Serialize};

use crate::store::kv::{self, Db, Result, Tree};

/// What the packs directory records about one installed pack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    /// The commit installed.
    pub commit: String,
    /// The branch or tag asked for; None: the default branch.
    #[serde(default)]
    pub reference: Option<String>,
    /// The repository, as requested.
    pub url: String,
    /// `version` from its pack.yaml.
    #[serde(default)]
    pub version: Option<String>,
    /// When (ms since the epoch).
    pub installed_ms: u64,
    /// Who asked for it.
    pub installed_by: String,
    /// The request that installed it.
    pub request: String,
    /// Whether its aliases are registered (`register` all or aliases).
    pub aliases: bool,
}

/// One installed pack: the live version and the earlier ones on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackRecord {
    /// The pack's name.
    pub name: String,
    /// The version `packs/<name>` points at.
    pub current: Installed,
    /// Earlier versions still on disk, newest first.
    #[serde(default)]
    pub previous: Vec<Installed>,
}

/// A change of `packs/<name>` about to happen. It is written and flushed
/// before the link moves, so that after a crash the link and the record
/// can be made to agree: a link already at `target` means the switch
/// happened and `record` is written; otherwise the intent is dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    /// The request making the switch.
    pub request: String,
    /// The pack.
    pub pack: String,
    /// The version the link will point at; None: the link goes (uninstall).
    pub target: Option<String>,
    /// The pack's record once switched; None: no record (uninstall).
    pub record: Option<PackRecord>,
    /// The record has been written to match the link.
    pub applied: bool,
}

fn intent_key(request: &str, pack: &str) -> Vec<u8> {
    format!("{request}\0{pack}").into_bytes()
}

/// The pack records and switch intents (trees `packs` and `pack_intents`).
pub struct PackRecords {
    records: Tree,
    /// Switches of `packs/<name>` in progress, by `request \0 pack`.
    intents: Tree,
}

fn json<T: Serialize>(t: &T) -> Vec<u8> {
    serde_json::to_vec(t).expect("pack records serialize")
}

impl PackRecords {
    /// The records in `db`.
    pub fn open(db: &Db) -> Result<Self> {
        Ok(PackRecords {
            records: db.open_tree("packs")?,
            intents: db.open_tree("pack_intents")?,
        })
    }

    /// The record of pack `name`, if installed.
    pub fn get(&self, name: &str) -> Option<PackRecord> {
        self.records
            .get(name.as_bytes())
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Every installed pack's record.
    pub fn all(&self) -> Vec<PackRecord> {
        self.records
            .iter()
            .values()
            .filter_map(|v| v.ok().and_then(|b| serde_json::from_slice(&b).ok()))
            .collect()
    }

    /// Record `intent` durably (flushed), before the link moves.
    pub fn begin(&self, intent: &Intent) -> Result<()> {
        self.intents
            .insert(intent_key(&intent.request, &intent.pack), json(intent))?;
        self.intents.flush()?;
        Ok(())
    }

    /// Write an intent's record (or remove it) and store the intent as
    /// given (applied), in one transaction. Not flushed: the intent was,
    /// so a crash before the next flush redoes this at start.
    pub fn apply(&self, intent: &Intent) -> std::result::Result<(), String> {
        let name = intent.pack.as_bytes();
        let rec = intent.record.as_ref().map(json);
        let key = intent_key(&intent.request, &intent.pack);
        let value = json(intent);
        kv::transaction(&[&self.records, &self.intents], |t| {
            match &rec {
                Some(r) => t[0].insert(name, r.as_slice())?,
                None => t[0].remove(name)?,
            };
            t[1].insert(&key, value.as_slice())?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| format!("{e:?}"))
    }

    /// Drop the intent of `request` on `pack`.
    pub fn forget(&self, request: &str, pack: &str) -> Result<()> {
        self.intents.remove(intent_key(request, pack)).map(drop)
    }

    /// The intents of `request` (None: of every request).
    pub fn intents(&self, request: Option<&str>) -> Vec<Intent> {
        let prefix = request.map(|r| intent_key(r, "")).unwrap_or_default();
        self.intents
            .scan_prefix(prefix)
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Make the intents' changes durable.
    pub fn flush(&self) -> Result<()> {
        self.intents.flush().map(drop)
    }
}

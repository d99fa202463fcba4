//! Which models exist and where they go.
//!
//! With `models:` in the config, the catalogue is exactly that list: names
//! and aliases map to ordered targets, and no upstream is asked. Without it
//! (the embedded default), the catalogue is what the upstreams' own
//! `GET /models` report, cached for a short time; a name that is not in the
//! cache triggers at most one refresh per [`MISS_REFRESH`] so that a client
//! sending random model names cannot make aibox hammer its upstreams.

use std::collections::HashMap;
use std::time::Duration;

use aibox_config::Config;
use serde::Serialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::error::{AttemptFailure, RouterError};
use crate::{Upstream, describe_reqwest};

/// How long a discovered model list is used before it is fetched again.
const TTL: Duration = Duration::from_secs(30);
/// The shortest interval between refreshes caused by unknown model names.
const MISS_REFRESH: Duration = Duration::from_secs(5);

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients use.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds; 0 when unknown.
    pub created: u64,
    /// The upstream serving it.
    pub owned_by: String,
}

type Targets = Vec<(usize, String)>;

/// When discovery last ran, and whether every upstream failed then.
#[derive(Default)]
pub(crate) struct RefreshState {
    at: Option<Instant>,
    failed: Option<Vec<AttemptFailure>>,
}

pub(crate) struct Discovered {
    at: Instant,
    models: Vec<ModelInfo>,
    map: HashMap<String, Targets>,
}

pub(crate) enum Catalog {
    Configured {
        map: HashMap<String, Targets>,
        models: Vec<ModelInfo>,
    },
    Discovered {
        state: RwLock<Option<Discovered>>,
        refresh: Mutex<RefreshState>,
    },
}

impl Catalog {
    pub(crate) fn new(cfg: &Config) -> Self {
        if cfg.models.is_empty() {
            return Catalog::Discovered {
                state: RwLock::new(None),
                refresh: Mutex::new(RefreshState::default()),
            };
        }
        let mut map = HashMap::new();
        let mut models = Vec::new();
        for m in &cfg.models {
            let targets: Targets = m
                .targets
                .iter()
                .map(|t| (t.upstream, t.model.clone()))
                .collect();
            let owner = m
                .targets
                .first()
                .map(|t| t.upstream_name.clone())
                .unwrap_or_default();
            for name in std::iter::once(&m.name).chain(m.aliases.iter()) {
                map.insert(name.clone(), targets.clone());
                models.push(ModelInfo {
                    id: name.clone(),
                    object: "model",
                    created: 0,
                    owned_by: owner.clone(),
                });
            }
        }
        Catalog::Configured { map, models }
    }

    pub(crate) async fn list(&self, upstreams: &[Upstream]) -> Result<Vec<ModelInfo>, RouterError> {
        match self {
            Catalog::Configured { models, .. } => Ok(models.clone()),
            Catalog::Discovered { state, refresh } => {
                {
                    let guard = state.read().await;
                    if let Some(d) = guard.as_ref().filter(|d| d.at.elapsed() < TTL) {
                        return Ok(d.models.clone());
                    }
                }
                Self::refresh(state, refresh, upstreams, true).await?;
                let guard = state.read().await;
                Ok(guard.as_ref().map(|d| d.models.clone()).unwrap_or_default())
            }
        }
    }

    pub(crate) async fn resolve(
        &self,
        model: &str,
        upstreams: &[Upstream],
    ) -> Result<Targets, RouterError> {
        let not_found = || RouterError::ModelNotFound {
            model: model.to_owned(),
        };
        match self {
            Catalog::Configured { map, .. } => map.get(model).cloned().ok_or_else(not_found),
            Catalog::Discovered { state, refresh } => {
                {
                    let guard = state.read().await;
                    if let Some(d) = guard.as_ref() {
                        let fresh = d.at.elapsed() < TTL;
                        if let Some(t) = d.map.get(model).filter(|_| fresh) {
                            return Ok(t.clone());
                        }
                    }
                }
                Self::refresh(state, refresh, upstreams, false).await?;
                let guard = state.read().await;
                guard
                    .as_ref()
                    .and_then(|d| d.map.get(model).cloned())
                    .ok_or_else(not_found)
            }
        }
    }

    /// Refetches the lists unless another task just did (single flight), or
    /// unless a miss-driven refresh happened within [`MISS_REFRESH`].
    async fn refresh(
        state: &RwLock<Option<Discovered>>,
        refresh: &Mutex<RefreshState>,
        upstreams: &[Upstream],
        forced: bool,
    ) -> Result<(), RouterError> {
        let mut last = refresh.lock().await;
        if let Some(at) = last.at {
            let fresh_enough = state
                .read()
                .await
                .as_ref()
                .is_some_and(|d| d.at.elapsed() < TTL);
            if at.elapsed() < MISS_REFRESH && (fresh_enough || !forced) {
                // Within the interval, repeat the last outcome: a failed
                // discovery stays a 503, not a misleading "model not found".
                return match &last.failed {
                    Some(attempts) => Err(RouterError::Discovery {
                        attempts: attempts.clone(),
                    }),
                    None => Ok(()),
                };
            }
        }
        last.at = Some(Instant::now());
        let mut models = Vec::new();
        let mut map: HashMap<String, Targets> = HashMap::new();
        let mut failures = Vec::new();
        for (idx, up) in upstreams.iter().enumerate() {
            match fetch_models(up).await {
                Ok(list) => {
                    for (id, created) in list {
                        let entry = map.entry(id.clone()).or_default();
                        if entry.is_empty() {
                            models.push(ModelInfo {
                                id: id.clone(),
                                object: "model",
                                created,
                                owned_by: up.name.clone(),
                            });
                        }
                        // The same name at several upstreams gives a fallback
                        // chain in config order.
                        entry.push((idx, id));
                    }
                }
                Err(f) => failures.push(f),
            }
        }
        if failures.len() == upstreams.len() && !upstreams.is_empty() {
            last.failed = Some(failures.clone());
            return Err(RouterError::Discovery { attempts: failures });
        }
        last.failed = None;
        for f in &failures {
            tracing::warn!(upstream = %f.upstream, reason = %f.reason, "cannot list this upstream's models");
        }
        *state.write().await = Some(Discovered {
            at: Instant::now(),
            models,
            map,
        });
        Ok(())
    }
}

pub(crate) async fn fetch_models(up: &Upstream) -> Result<Vec<(String, u64)>, AttemptFailure> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        created: u64,
    }
    let fail = |reason: String, timed_out: bool| AttemptFailure {
        upstream: up.name.clone(),
        reason,
        timed_out,
    };
    let mut req = up.client.get(format!("{}/models", up.base_url));
    if let Some(h) = up.authorization().await.map_err(|r| fail(r, false))? {
        req = req.header(http::header::AUTHORIZATION, h);
    }
    let limit = up.timeouts.first_byte.min(up.timeouts.total);
    let resp = tokio::time::timeout(limit, req.send())
        .await
        .map_err(|_| fail(format!("no answer within {} ms", limit.as_millis()), true))?
        .map_err(|e| fail(describe_reqwest(&e), e.is_timeout()))?;
    if !resp.status().is_success() {
        return Err(fail(
            format!("GET /models answered HTTP {}", resp.status().as_u16()),
            false,
        ));
    }
    let body = tokio::time::timeout(limit, resp.bytes())
        .await
        .map_err(|_| fail("the model list stalled".into(), true))?
        .map_err(|e| fail(describe_reqwest(&e), false))?;
    let list: List = serde_json::from_slice(&body).map_err(|e| {
        fail(
            format!("GET /models is not an OpenAI model list: {e}"),
            false,
        )
    })?;
    Ok(list.data.into_iter().map(|e| (e.id, e.created)).collect())
}

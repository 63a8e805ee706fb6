//! Before any node is contacted: which model, which nodes in which order,
//! and the hold that pays for the worst case.

use sharenet_ledger::AppRouting;
use sharenet_proto::ModelKind;
use sharenet_router as r;

use crate::core::accounts::{Admission, Hold, Principal};
use crate::core::error::Error;
use crate::core::job::{Job, JobKind, ProviderPrefs, SortKey};
use crate::core::registry::Offer;
use crate::core::{Core, now_ms};

/// The nodes to try, best first, with what each offers.
pub(super) struct Plan {
    /// The model that will be served (the requested one or a fallback).
    pub model: String,
    pub candidates: Vec<Offer>,
    /// The job is sensitive (its request or its app's rules).
    pub sensitive: bool,
    /// The app's private pool: a job served there keeps its prompt there.
    pub pool: Vec<[u8; 32]>,
    /// The job's preferences with the app's rules on where its prompt may
    /// go folded in ([`effective_prefs`]): a spot check's re-run of the job
    /// honours them too.
    pub prefs: ProviderPrefs,
}

/// The job's preferences with the app's rules on where its prompt may go
/// folded in: no data collection when either says so, and the licenses
/// both allow. Routing the result under no app rules allows exactly the
/// nodes routing the job under its app's rules allows, private pool aside
/// (a job served from the pool is never re-run elsewhere).
fn effective_prefs(job: &Job, rules: &AppRouting) -> Result<ProviderPrefs, Error> {
    Ok(ProviderPrefs {
        deny_data_collection: job.prefs.deny_data_collection || rules.deny_data_collection,
        licenses: licenses(&job.prefs.licenses, &rules.licenses)?,
        ..job.prefs.clone()
    })
}

/// Every node serving `model` that `job` may go to under the rules of
/// `app`, best first (the same routing as dispatch, with no limit on the
/// list's length): spot checks choose their reference among the nodes the
/// original job allowed. Empty when none may.
pub(crate) fn allowed_nodes(core: &Core, job: &Job, model: &str, app: &str) -> Vec<[u8; 32]> {
    let rules = core
        .accounts
        .app(app)
        .map(|a| a.routing)
        .unwrap_or_default();
    route(core, model, job, &rules, crate::core::registry::MAX_NODES).unwrap_or_default()
}

/// The first model of the job's list that some node serves (the `models`
/// fallback list). A model served only for the other endpoint is a 400, an
/// unknown model a 404, and no live node at all a 503.
pub(super) fn resolve_model(core: &Core, job: &Job) -> Result<String, Error> {
    let want = job.kind.model_kind();
    let other = match want {
        ModelKind::Embedding => ModelKind::Text,
        ModelKind::Text => ModelKind::Embedding,
    };
    // An alias names another model (the operator's `[aliases]`).
    let names: Vec<&String> = job
        .models
        .iter()
        .map(|m| core.aliases.get(m).unwrap_or(m))
        .collect();
    // With fallbacks, the first model some node serves with what the
    // request needs (tools, structured outputs); else the first served at
    // all, whose routing then names the missing capability.
    let need = job.needs().bits();
    if need != 0
        && names.len() > 1
        && let Some(m) = names
            .iter()
            .find(|m| core.routing.serves_with(m, want, need))
    {
        return Ok((*m).clone());
    }
    for model in names {
        if core.routing.serves(model, want) {
            return Ok(model.clone());
        }
        if core.routing.serves(model, other) {
            let what = match want {
                ModelKind::Embedding => {
                    "a text generation model; use /v1/chat/completions or /v1/completions"
                }
                ModelKind::Text => "an embedding model; use /v1/embeddings",
            };
            return Err(Error::bad_request(
                format!("`{model}` is {what}"),
                Some("model"),
            ));
        }
    }
    Err(if core.registry.live_nodes(now_ms()) > 0 {
        Error::ModelNotFound(job.requested_model().to_owned())
    } else {
        Error::NoCapacity("no live nodes on the network right now".into())
    })
}

/// The licenses a request may be served under: the app's rule, narrowed
/// by the request's `provider.licenses` (case-insensitive); a request
/// whose list shares none with the app's is a 400.
fn licenses(asked: &[String], app: &[String]) -> Result<Vec<String>, Error> {
    let out: Vec<String> = match (asked.is_empty(), app.is_empty()) {
        (true, _) => app.to_vec(),
        (false, true) => asked.to_vec(),
        (false, false) => asked
            .iter()
            .filter(|l| app.iter().any(|a| a.eq_ignore_ascii_case(l)))
            .cloned()
            .collect(),
    };
    if out.is_empty() && !asked.is_empty() {
        return Err(Error::bad_request(
            format!("none of these licenses is allowed for this app (its rule allows {app:?})"),
            Some("provider.licenses"),
        ));
    }
    Ok(out)
}

/// The routing knobs of one decision, with at most `max_candidates` in
/// the list.
fn route_params(core: &Core, max_candidates: usize) -> r::RouteParams {
    // "Full" is the router's default: a node with as many of our jobs as
    // it has slots (our own in-flight jobs count at once; its advert lags)
    // gets no more while another has room, and only when every node is full
    // do jobs wait in the nodes' queues (`spill_queue_factor`).
    //
    // A node never measured is assumed fast (a short first token, quick
    // decoding), so it gets tried and measured rather than starved behind
    // nodes whose real numbers beat a pessimistic guess; the probation share
    // caps what new nodes get while established ones are available.
    r::RouteParams {
        spill_queue_factor: core.spill_queue_factor,
        unknown_ttft_ms: 20.0,
        unknown_tokens_per_sec: 500.0,
        max_candidates,
        ..r::RouteParams::default()
    }
}

/// Orders the nodes to try with the pure router over the routing index:
/// the request's filters and preferences and the app's rules, then price,
/// predicted latency and trust, load-aware. When a filter empties the list
/// the 503 names it.
fn route(
    core: &Core,
    model: &str,
    job: &Job,
    rules: &AppRouting,
    max_candidates: usize,
) -> Result<Vec<[u8; 32]>, Error> {
    let p = &job.prefs;
    let sensitive = p.sensitive || rules.sensitive;
    if sensitive && rules.private_pool.is_empty() {
        return Err(Error::bad_request(
            "a sensitive request needs a private pool of the app's own nodes, and this app has none",
            Some("provider.sensitive"),
        ));
    }
    let private_pool = (!rules.private_pool.is_empty()).then(|| r::PrivatePool {
        nodes: rules.private_pool.clone(),
        sensitive,
        spill_to_public: rules.spill_to_public,
    });
    let prefs = r::Preferences {
        sort: p.sort.map(|s| match s {
            SortKey::Price => r::Sort::Price,
            SortKey::Latency => r::Sort::Latency,
            SortKey::Throughput => r::Sort::Throughput,
        }),
        order: p.order.clone(),
        only: p.only.clone(),
        ignore: p.ignore.clone(),
        allow_fallbacks: p.allow_fallbacks,
        max_price_in: p.max_price_in,
        max_price_out: p.max_price_out,
        min_trust: p.min_trust,
        region: p.region.clone(),
        quantizations: p.quantizations.clone(),
        weights_sha256: p.weights_sha256,
        capabilities: job.needs().bits()
            | if p.deny_data_collection || rules.deny_data_collection {
                r::NO_PROMPT_RETENTION
            } else {
                0
            },
        licenses: licenses(&p.licenses, &rules.licenses)?,
        private_pool,
    };
    let request = r::Request {
        input_tokens: job.estimated_input_tokens(),
        max_output_tokens: job.params.max_tokens,
        prefs,
    };
    let params = route_params(core, max_candidates);
    let needed = u64::from(request.input_tokens) + u64::from(request.max_output_tokens);
    core.routing
        .route(
            model,
            job.kind.model_kind(),
            &request,
            &r::Weights::default(),
            &params,
        )
        .map_err(|e| match e {
            // No node's window holds the prompt and max_tokens: the request
            // is at fault (400, as OpenAI answers), not the network.
            r::NoCandidate::Filtered {
                filter: r::Filter::ContextLength,
                ..
            } => Error::bad_request(
                format!(
                    "this request needs about {needed} tokens of context (the prompt, about {} tokens, plus max_tokens {}), more than any node serving `{model}` offers; shorten the input or lower max_tokens",
                    request.input_tokens, request.max_output_tokens
                ),
                Some(match job.kind {
                    JobKind::Chat => "messages",
                    JobKind::Completion => "prompt",
                    JobKind::Embedding => "input",
                }),
            ),
            r::NoCandidate::Filtered {
                filter: r::Filter::Capacity,
                before,
            } => Error::NoCapacity(format!(
                "every node serving `{model}` is busy ({before} at capacity, counting the jobs waiting in their queues); retry shortly"
            )),
            r::NoCandidate::Filtered {
                filter: r::Filter::Capabilities,
                ..
            } => {
                let mut needs = job.needs().names();
                if request.prefs.capabilities & r::NO_PROMPT_RETENTION != 0 {
                    needs.push("data_collection: deny (a node that keeps no prompts)");
                }
                Error::NoCapacity(format!(
                    "no node serving `{model}` supports {} right now (provider.require_parameters semantics: a request that needs a feature goes only to nodes that have it)",
                    needs.join(" and ")
                ))
            }
            r::NoCandidate::Filtered {
                filter: r::Filter::License,
                ..
            } => Error::NoCapacity(format!(
                "no node serves `{model}` under the licenses {:?} right now",
                request.prefs.licenses
            )),
            e => Error::NoCapacity(format!("{e}")),
        })
}

/// The ranked nodes whose adverts are still live, at most as many as the
/// job may try. The index can lag an expiry by up to a second, so when
/// every ranked node has expired, expired adverts are pruned and the job
/// is routed once more.
pub(super) fn plan_candidates(
    core: &Core,
    job: &Job,
    model: String,
    principal: &Principal,
) -> Result<Plan, Error> {
    let rules = core
        .accounts
        .app(&principal.app)
        .map(|a| a.routing)
        .unwrap_or_default();
    let now = now_ms();
    let live = |ranked: Vec<[u8; 32]>| -> Vec<Offer> {
        ranked
            .iter()
            .filter_map(|k| core.registry.offer_of(k, &model, now))
            .collect()
    };
    let max = r::RouteParams::default().max_candidates;
    let mut candidates = live(route(core, &model, job, &rules, max)?);
    if candidates.is_empty() {
        core.prune_expired(now);
        candidates = live(route(core, &model, job, &rules, max)?);
    }
    if candidates.is_empty() {
        return Err(Error::NoCapacity(format!(
            "no live node serves `{model}` right now"
        )));
    }
    let attempts = if job.prefs.allow_fallbacks {
        core.max_attempts
    } else {
        candidates.len()
    };
    candidates.truncate(attempts.max(1));
    Ok(Plan {
        model,
        candidates,
        sensitive: job.prefs.sensitive || rules.sensitive,
        prefs: effective_prefs(job, &rules)?,
        pool: rules.private_pool,
    })
}

/// Rate limits and the hold: the worst case at the highest price among
/// the nodes the job may try.
pub(super) async fn admit(
    core: &Core,
    job: &Job,
    plan: &Plan,
    principal: &Principal,
    end_customer: Option<&str>,
) -> Result<Hold, Error> {
    let max_price_in = plan.candidates.iter().map(|o| o.offer.price_in).max();
    let max_price_out = plan.candidates.iter().map(|o| o.offer.price_out).max();
    Ok(core
        .accounts
        .admit(&Admission {
            principal,
            end_customer,
            max_input_tokens: job.max_input_tokens(),
            max_output_tokens: job.max_output_tokens(),
            max_price_in: max_price_in.unwrap_or(0),
            max_price_out: max_price_out.unwrap_or(0),
            now_ms: now_ms(),
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::licenses;

    #[test]
    fn a_request_narrows_the_apps_licenses_and_never_widens_them() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(licenses(&[], &[]).unwrap(), s(&[]));
        assert_eq!(licenses(&s(&["mit"]), &[]).unwrap(), s(&["mit"]));
        assert_eq!(licenses(&[], &s(&["mit"])).unwrap(), s(&["mit"]));
        assert_eq!(
            licenses(&s(&["MIT", "gpl-3.0"]), &s(&["mit", "apache-2.0"])).unwrap(),
            s(&["MIT"])
        );
        assert!(licenses(&s(&["gpl-3.0"]), &s(&["mit"])).is_err());
    }
}

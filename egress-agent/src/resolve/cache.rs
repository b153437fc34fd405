//! What the agent knows about each hostname: the union of recent answers, each address with
//! its own expiry, plus when to ask again.
//!
//! Why a union and not the latest answer: DNS pools rotate (each answer is a subset) and
//! workloads cache answers for up to a TTL, so an address seen a moment ago may still be the
//! one a workload connects to. Each address lives for its clamped TTL plus a grace period
//! from the last answer that contained it. While the upstream fails, the last addresses stay
//! until `stale_for` after the last successful answer, then go.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use egress_common::ResolveStatus;

use crate::policy::Hostname;

/// Tunables of the resolver (see `egress-agent run --help`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// TTLs below this are raised to it (refresh rate floor).
    pub min_ttl: Duration,
    /// TTLs above this are lowered to it (longest wait between refreshes).
    pub max_ttl: Duration,
    /// How long an address outlives its TTL.
    pub grace: Duration,
    /// How long the last known addresses are kept while the upstream fails.
    pub stale_for: Duration,
    /// Retry delay after the first failure; doubles per failure up to `max_ttl` or 60 s.
    pub retry: Duration,
    /// Refresh interval of names that do not exist or have no address, when the answer
    /// carries no negative TTL.
    pub negative_ttl: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(300),
            stale_for: Duration::from_secs(3600),
            retry: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(30),
        }
    }
}

/// The answer to one resolution of a name (A and AAAA together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At least one address, each with the smallest TTL along its CNAME chain.
    Addresses(Vec<(IpAddr, u32)>),
    /// The name does not exist (NXDOMAIN) or has no A/AAAA records (NODATA).
    NoAddress {
        nxdomain: bool,
        negative_ttl: Option<u32>,
    },
    /// No usable answer (timeout, SERVFAIL, refused…).
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    /// Address → unix second at which it expires (TTL + grace after the last answer).
    pub addrs: BTreeMap<IpAddr, u64>,
    pub status: ResolveStatus,
    /// Unix second of the last successful answer (addresses, NXDOMAIN or NODATA); 0: never.
    pub resolved_at: u64,
    /// Unix second at which the name is due for resolution.
    pub refresh_at: u64,
    pub failures: u32,
    pub last_error: Option<String>,
    pub in_flight: bool,
}

impl HostState {
    fn new(now: u64) -> Self {
        Self {
            addrs: BTreeMap::new(),
            status: ResolveStatus::PENDING,
            resolved_at: 0,
            refresh_at: now,
            failures: 0,
            last_error: None,
            in_flight: false,
        }
    }
}

/// Every hostname of the policy and its state. Owned by the agent loop.
#[derive(Debug, Default)]
pub struct HostCache {
    hosts: BTreeMap<Hostname, HostState>,
    settings: ResolverSettings,
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl HostCache {
    pub fn new(settings: ResolverSettings) -> Self {
        Self {
            hosts: BTreeMap::new(),
            settings,
        }
    }

    pub fn settings(&self) -> &ResolverSettings {
        &self.settings
    }

    pub fn get(&self, host: &Hostname) -> Option<&HostState> {
        self.hosts.get(host)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Hostname, &HostState)> {
        self.hosts.iter()
    }

    /// Makes the cache hold exactly `names`: new names are due now, dropped names are
    /// forgotten, the rest keep their state. Returns the new names.
    pub fn sync<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a Hostname>,
        now: u64,
    ) -> Vec<Hostname> {
        let wanted: BTreeMap<&Hostname, ()> = names.into_iter().map(|n| (n, ())).collect();
        self.hosts.retain(|h, _| wanted.contains_key(h));
        let mut added = Vec::new();
        for name in wanted.keys() {
            if !self.hosts.contains_key(*name) {
                self.hosts.insert((*name).clone(), HostState::new(now));
                added.push((*name).clone());
            }
        }
        added
    }

    /// Seeds a name with an address found in the pinned maps at start-up. The address is
    /// kept at least `grace` from now: the clock moved on while no agent ran, which is no
    /// reason to drop every learned address before the first refresh.
    pub fn adopt(
        &mut self,
        host: &Hostname,
        addr: IpAddr,
        expires_at: u64,
        resolved_at: u64,
        now: u64,
    ) {
        let Some(state) = self.hosts.get_mut(host) else {
            return;
        };
        let until = expires_at.max(now + secs(self.settings.grace));
        let slot = state.addrs.entry(addr).or_insert(0);
        *slot = (*slot).max(until);
        state.resolved_at = state.resolved_at.max(resolved_at);
        if state.status == ResolveStatus::PENDING {
            state.status = ResolveStatus::OK;
        }
    }

    /// Makes every name due now (SIGHUP).
    pub fn refresh_all(&mut self, now: u64) {
        for state in self.hosts.values_mut() {
            state.refresh_at = state.refresh_at.min(now);
        }
    }

    /// Names due for resolution, marked as in flight.
    pub fn take_due(&mut self, now: u64) -> Vec<Hostname> {
        let mut due = Vec::new();
        for (name, state) in &mut self.hosts {
            if !state.in_flight && state.refresh_at <= now {
                state.in_flight = true;
                due.push(name.clone());
            }
        }
        due
    }

    /// Records an answer. Returns whether the set of live addresses may have changed.
    pub fn apply(&mut self, host: &Hostname, outcome: Outcome, now: u64) -> bool {
        let s = &self.settings;
        let clamp = |ttl: u64| ttl.clamp(secs(s.min_ttl), secs(s.max_ttl).max(secs(s.min_ttl)));
        let Some(state) = self.hosts.get_mut(host) else {
            return false;
        };
        state.in_flight = false;
        match outcome {
            Outcome::Addresses(answers) => {
                let mut next = u64::MAX;
                for (addr, ttl) in answers {
                    let ttl = clamp(u64::from(ttl));
                    next = next.min(ttl);
                    let until = now + ttl + secs(s.grace);
                    let slot = state.addrs.entry(addr).or_insert(0);
                    *slot = (*slot).max(until);
                }
                state.status = ResolveStatus::OK;
                state.resolved_at = now;
                state.failures = 0;
                state.last_error = None;
                state.refresh_at = now + if next == u64::MAX { clamp(0) } else { next };
            }
            Outcome::NoAddress {
                nxdomain,
                negative_ttl,
            } => {
                state.status = if nxdomain {
                    ResolveStatus::NXDOMAIN
                } else {
                    ResolveStatus::NODATA
                };
                state.resolved_at = now;
                state.failures = 0;
                state.last_error = None;
                let ttl = negative_ttl.map_or(secs(s.negative_ttl), u64::from);
                state.refresh_at = now + clamp(ttl).min(secs(s.negative_ttl).max(secs(s.min_ttl)));
            }
            Outcome::Failed(error) => {
                state.status = ResolveStatus::FAILING;
                state.failures = state.failures.saturating_add(1);
                state.last_error = Some(error);
                let cap = secs(s.max_ttl).min(60);
                let backoff = secs(s.retry)
                    .saturating_mul(1u64 << state.failures.saturating_sub(1).min(16))
                    .min(cap);
                state.refresh_at = now + backoff;
            }
        }
        true
    }

    /// Until when `addr` of `state` stays allowed: its own expiry, stretched while the
    /// upstream fails to `stale_for` after the last successful answer.
    pub fn alive_until(&self, state: &HostState, expires_at: u64) -> u64 {
        if state.status == ResolveStatus::FAILING && state.resolved_at > 0 {
            expires_at.max(state.resolved_at + secs(self.settings.stale_for))
        } else {
            expires_at
        }
    }

    /// Live addresses of `host` with the time each stays allowed.
    pub fn live(&self, host: &Hostname, now: u64) -> Vec<(IpAddr, u64)> {
        let Some(state) = self.hosts.get(host) else {
            return Vec::new();
        };
        state
            .addrs
            .iter()
            .map(|(a, &exp)| (*a, self.alive_until(state, exp)))
            .filter(|&(_, until)| until > now)
            .collect()
    }

    /// Forgets expired addresses. Returns whether any went.
    pub fn prune(&mut self, now: u64) -> bool {
        let mut changed = false;
        let stale_for = secs(self.settings.stale_for);
        for state in self.hosts.values_mut() {
            let failing = state.status == ResolveStatus::FAILING && state.resolved_at > 0;
            let floor = if failing {
                state.resolved_at + stale_for
            } else {
                0
            };
            let before = state.addrs.len();
            state.addrs.retain(|_, exp| (*exp).max(floor) > now);
            changed |= state.addrs.len() != before;
        }
        changed
    }

    /// The next unix second at which something is due: a refresh or an expiry.
    pub fn next_deadline(&self) -> Option<u64> {
        self.hosts
            .values()
            .flat_map(|state| {
                let refresh = (!state.in_flight).then_some(state.refresh_at);
                let expiries = state.addrs.values().map(|&e| self.alive_until(state, e));
                refresh.into_iter().chain(expiries)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Hostname {
        Hostname::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cache() -> (HostCache, Hostname) {
        let mut c = HostCache::new(ResolverSettings {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(600),
            grace: Duration::from_secs(60),
            stale_for: Duration::from_secs(1000),
            retry: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(30),
        });
        let h = host("api.allowed.test");
        assert_eq!(c.sync([&h], 100), vec![h.clone()]);
        (c, h)
    }

    #[test]
    fn answers_accumulate_with_per_address_expiry() {
        let (mut c, h) = cache();
        assert_eq!(c.take_due(100), vec![h.clone()]);
        assert!(
            c.take_due(100).is_empty(),
            "in flight names are not due twice"
        );
        c.apply(&h, Outcome::Addresses(vec![(ip("198.51.100.1"), 30)]), 100);
        assert_eq!(c.get(&h).unwrap().refresh_at, 130);
        c.apply(&h, Outcome::Addresses(vec![(ip("198.51.100.2"), 1)]), 130);
        // TTL 1 is raised to the 5 s floor.
        assert_eq!(c.get(&h).unwrap().refresh_at, 135);
        assert_eq!(
            c.live(&h, 131),
            vec![
                (ip("198.51.100.1"), 100 + 30 + 60),
                (ip("198.51.100.2"), 130 + 5 + 60)
            ]
        );
        // The first address has outlived TTL + grace; the second has not.
        assert_eq!(c.live(&h, 191), vec![(ip("198.51.100.2"), 195)]);
        assert!(c.prune(191));
        assert_eq!(c.get(&h).unwrap().addrs.len(), 1);
    }

    #[test]
    fn failures_keep_addresses_until_the_staleness_bound_and_back_off() {
        let (mut c, h) = cache();
        c.apply(&h, Outcome::Addresses(vec![(ip("198.51.100.1"), 10)]), 100);
        c.apply(&h, Outcome::Failed("timeout".into()), 110);
        assert_eq!(c.get(&h).unwrap().refresh_at, 111);
        c.apply(&h, Outcome::Failed("timeout".into()), 111);
        assert_eq!(c.get(&h).unwrap().refresh_at, 113);
        c.apply(&h, Outcome::Failed("timeout".into()), 113);
        assert_eq!(c.get(&h).unwrap().refresh_at, 117);
        // Past TTL + grace (170) but within stale_for of the last answer (1100).
        assert_eq!(c.live(&h, 500), vec![(ip("198.51.100.1"), 1100)]);
        assert!(!c.prune(500));
        assert!(c.live(&h, 1100).is_empty());
        assert!(c.prune(1100));
    }

    #[test]
    fn nxdomain_is_an_answer_with_no_address_and_a_negative_refresh() {
        let (mut c, h) = cache();
        c.apply(
            &h,
            Outcome::NoAddress {
                nxdomain: true,
                negative_ttl: Some(10),
            },
            100,
        );
        let s = c.get(&h).unwrap();
        assert_eq!(s.status, ResolveStatus::NXDOMAIN);
        assert_eq!(s.refresh_at, 110);
        assert!(c.live(&h, 100).is_empty());
        c.apply(
            &h,
            Outcome::NoAddress {
                nxdomain: false,
                negative_ttl: None,
            },
            110,
        );
        assert_eq!(c.get(&h).unwrap().status, ResolveStatus::NODATA);
        assert_eq!(c.get(&h).unwrap().refresh_at, 140);
    }

    #[test]
    fn adoption_keeps_old_addresses_for_at_least_the_grace_period() {
        let (mut c, h) = cache();
        c.adopt(&h, ip("198.51.100.1"), 50, 40, 100);
        assert_eq!(c.live(&h, 100), vec![(ip("198.51.100.1"), 160)]);
        assert_eq!(c.get(&h).unwrap().status, ResolveStatus::OK);
        // Unknown names are ignored: the policy decides which names exist.
        c.adopt(&host("gone.test"), ip("198.51.100.9"), 500, 40, 100);
        assert!(c.get(&host("gone.test")).is_none());
    }

    #[test]
    fn sync_keeps_state_of_names_still_wanted() {
        let (mut c, h) = cache();
        c.apply(&h, Outcome::Addresses(vec![(ip("198.51.100.1"), 30)]), 100);
        let other = host("other.test");
        assert_eq!(c.sync([&h, &other], 101), vec![other.clone()]);
        assert_eq!(c.get(&h).unwrap().addrs.len(), 1);
        assert_eq!(c.sync([&other], 102), Vec::<Hostname>::new());
        assert!(c.get(&h).is_none());
        assert_eq!(c.next_deadline(), Some(101));
    }
}

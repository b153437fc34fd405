//! zonesrv: a small authoritative DNS server (UDP and TCP) built on hickory-proto, serving a
//! zone the test can change while it runs: records with TTLs, CNAME chains, names that do not
//! exist (NXDOMAIN with an SOA whose minimum is the negative TTL), names with no address of a
//! type (NODATA), rotating pools, a failure switch (SERVFAIL) and random-case owner names.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, SOA},
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    runtime::Runtime,
};

use crate::netns::Netns;

#[derive(Clone, Debug)]
pub enum Rec {
    Addr(IpAddr, u32),
    Cname(String, u32),
}

/// Zone content and behaviour. Names are lower case without the trailing dot.
#[derive(Default)]
pub struct Zone {
    pub records: BTreeMap<String, Vec<Rec>>,
    /// Names whose answer is one address of the pool per query, round robin, TTL as given.
    pub rotating: BTreeMap<String, (Vec<IpAddr>, u32, usize)>,
    /// Negative TTL (SOA minimum) of NXDOMAIN and NODATA answers.
    pub negative_ttl: u32,
    /// Answer SERVFAIL to everything.
    pub failing: bool,
    /// Answer nothing at all (an upstream that is gone: every query times out).
    pub silent: bool,
    /// Owner names in random case (0x20 style).
    pub random_case: bool,
}

impl Zone {
    pub fn new() -> Self {
        Self {
            negative_ttl: 10,
            ..Self::default()
        }
    }

    fn key(name: &str) -> String {
        name.trim_end_matches('.').to_ascii_lowercase()
    }

    /// Replaces the addresses of `name` (A and AAAA), keeping nothing else.
    pub fn set(&mut self, name: &str, addrs: &[&str], ttl: u32) -> &mut Self {
        let recs = addrs
            .iter()
            .map(|a| Rec::Addr(a.parse().expect("an IP address"), ttl))
            .collect();
        self.records.insert(Self::key(name), recs);
        self
    }

    pub fn cname(&mut self, name: &str, target: &str, ttl: u32) -> &mut Self {
        self.records
            .insert(Self::key(name), vec![Rec::Cname(Self::key(target), ttl)]);
        self
    }

    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.records.remove(&Self::key(name));
        self
    }

    pub fn rotate(&mut self, name: &str, pool: &[&str], ttl: u32) -> &mut Self {
        let pool = pool
            .iter()
            .map(|a| a.parse().expect("an IP address"))
            .collect();
        self.rotating.insert(Self::key(name), (pool, ttl, 0));
        self
    }

    fn answer(&mut self, query: &Message) -> Message {
        let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let Some(q) = query.queries.first().cloned() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        response.add_query(q.clone());
        if self.failing {
            response.metadata.response_code = ResponseCode::ServFail;
            return response;
        }
        let qname = q.name().to_ascii();
        let mut current = Self::key(&qname);
        let mut owner = q.name().clone();
        let mut found_any = false;
        for _hop in 0..16 {
            if let Some((pool, ttl, next)) = self.rotating.get_mut(&current) {
                found_any = true;
                let (addr, ttl) = (pool[*next % pool.len()], *ttl);
                *next += 1;
                if let Some(rdata) = rdata_for(addr, q.query_type()) {
                    response.add_answer(Record::from_rdata(self.owner(&owner), ttl, rdata));
                }
                break;
            }
            let Some(recs) = self.records.get(&current).cloned() else {
                break;
            };
            found_any = true;
            if let Some(Rec::Cname(target, ttl)) = recs.iter().find(|r| matches!(r, Rec::Cname(..)))
            {
                let target_name = Name::from_ascii(format!("{target}.")).expect("valid name");
                response.add_answer(Record::from_rdata(
                    self.owner(&owner),
                    *ttl,
                    RData::CNAME(CNAME(target_name.clone())),
                ));
                current = target.clone();
                owner = target_name;
                continue;
            }
            for rec in &recs {
                if let Rec::Addr(addr, ttl) = rec
                    && let Some(rdata) = rdata_for(*addr, q.query_type())
                {
                    response.add_answer(Record::from_rdata(self.owner(&owner), *ttl, rdata));
                }
            }
            break;
        }
        let has_data = response
            .answers
            .iter()
            .any(|r| r.record_type() == q.query_type());
        if !found_any {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if !has_data {
            response.add_authority(self.soa());
        }
        response
    }

    fn owner(&self, name: &Name) -> Name {
        if !self.random_case {
            return name.clone();
        }
        let mixed: String = name
            .to_ascii()
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if (i * 7 + 3) % 3 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        Name::from_ascii(mixed).unwrap_or_else(|_| name.clone())
    }

    fn soa(&self) -> Record {
        let apex = Name::from_ascii("test.").expect("valid name");
        let soa = SOA::new(
            Name::from_ascii("ns.test.").expect("valid name"),
            Name::from_ascii("hostmaster.test.").expect("valid name"),
            1,
            3600,
            600,
            86400,
            self.negative_ttl,
        );
        Record::from_rdata(apex, self.negative_ttl, RData::SOA(soa))
    }
}

fn rdata_for(addr: IpAddr, qtype: RecordType) -> Option<RData> {
    match (addr, qtype) {
        (IpAddr::V4(a), RecordType::A) => Some(RData::A(A(a))),
        (IpAddr::V6(a), RecordType::AAAA) => Some(RData::AAAA(AAAA(a))),
        _ => None,
    }
}

/// A running server. Dropping it does not stop it: it lives as long as its runtime.
#[derive(Clone)]
pub struct ZoneServer {
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
}

impl ZoneServer {
    /// Serves `zone` on `addr` (UDP and TCP) inside `netns`.
    pub fn start(
        rt: &Runtime,
        netns: &Netns,
        addr: SocketAddr,
        zone: Zone,
    ) -> anyhow::Result<Self> {
        let server = Self {
            zone: Arc::new(Mutex::new(zone)),
            queries: Arc::new(AtomicU64::new(0)),
        };
        let (udp, tcp) = netns.run(move || -> std::io::Result<_> {
            let udp = std::net::UdpSocket::bind(addr)?;
            let tcp = std::net::TcpListener::bind(addr)?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })??;
        let s = server.clone();
        rt.spawn(async move {
            let udp = UdpSocket::from_std(udp).expect("register");
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = s.handle(&buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let s = server.clone();
        rt.spawn(async move {
            let tcp = TcpListener::from_std(tcp).expect("register");
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut msg = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        let Some(reply) = s.handle(&msg) else { return };
                        let Ok(len) = u16::try_from(reply.len()) else {
                            return;
                        };
                        if stream.write_u16(len).await.is_err()
                            || stream.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(server)
    }

    fn handle(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(bytes).ok()?;
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut zone = self.zone.lock().unwrap();
        if zone.silent {
            return None;
        }
        let response = zone.answer(&query);
        response.to_vec().ok()
    }

    /// Changes the zone.
    pub fn update(&self, f: impl FnOnce(&mut Zone)) {
        f(&mut self.zone.lock().unwrap());
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

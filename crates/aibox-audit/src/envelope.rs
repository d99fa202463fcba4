//! Per-turn envelopes: what a turn's audit events were, sealed and signed.
//!
//! An envelope commits to the ordered audit events of one turn (or to one
//! batch of events that belong to no turn) through the RFC 6962 Merkle root
//! of their leaf hashes, where the leaf data of an event is
//! [`AuditEvent::canonical_bytes`]. The envelope is itself a
//! [signed note](crate::note) whose text is exactly nine lines:
//!
//! ```text
//! aibox-envelope/v1
//! <tenant id>
//! <turn id, or "*" for events without a turn>
//! <first sequence number, decimal>
//! <last sequence number, decimal>
//! <number of events, decimal>
//! <base64 (standard, padded) of the events' 32-byte Merkle root>
//! <base64 (standard, padded) of the previous envelope's 32-byte leaf hash>
//! <seal time, Unix milliseconds, decimal>
//! ```
//!
//! Every line ends in `\n`; decimals have no sign and no leading zeros
//! (except `0`). The sequence numbers are the tenant-wide numbers of the
//! first and last event; an envelope holds at least one event and its events
//! have consecutive numbers, so `last - first + 1 == count`, and the next
//! envelope of the tenant starts at `last + 1`. `*` cannot be a turn id,
//! whose alphabet is `[A-Za-z0-9-]`.
//!
//! The envelopes of a tenant are the leaves, in order, of the tenant's log
//! (see [`crate::checkpoint`]): the leaf data of an envelope is its note
//! *text* (the nine lines, without the signature lines), so the log commits
//! to what was attested and does not change if an envelope is re-signed
//! after a key rotation. The "previous" line is the RFC 6962 leaf hash of
//! the previous envelope's text in the same log, or 32 zero bytes for the
//! first envelope; it chains envelopes so that a single signed envelope
//! pins the whole history before it.

use aibox_core::audit::AuditEvent;
use aibox_core::{TenantId, TurnId};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::checkpoint::parse_decimal;
use crate::merkle::{self, Hash};
use crate::note::{self, NoteError, NoteSigner, NoteVerifier};

/// The first line of every version 1 envelope.
pub const ENVELOPE_HEADER: &str = "aibox-envelope/v1";

/// The turn line of an envelope whose events have no turn.
pub const NO_TURN: &str = "*";

/// The "previous" value of a tenant's first envelope.
pub const GENESIS_PREVIOUS: Hash = [0u8; 32];

/// Why an envelope could not be built or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// An envelope needs at least one event.
    #[error("an envelope needs at least one event")]
    NoEvents,
    /// The sequence numbers would overflow.
    #[error("the sequence range overflows")]
    SequenceOverflow,
    /// An event could not be encoded.
    #[error("event {index} could not be encoded: {reason}")]
    Encoding {
        /// The position of the event.
        index: usize,
        /// The encoder's message.
        reason: String,
    },
    /// An event belongs to another tenant.
    #[error("event {index} belongs to another tenant than the envelope")]
    TenantMismatch {
        /// The position of the event.
        index: usize,
    },
    /// An event belongs to another turn.
    #[error("event {index} belongs to another turn than the envelope")]
    TurnMismatch {
        /// The position of the event.
        index: usize,
    },
    /// The number of events differs from the envelope's count.
    #[error("the envelope counts {expected} events but {got} were supplied")]
    CountMismatch {
        /// The envelope's count.
        expected: u64,
        /// The number supplied.
        got: u64,
    },
    /// The events' root differs: an event was dropped, added, reordered or
    /// modified.
    #[error("the events do not match the envelope's Merkle root (dropped, reordered or modified)")]
    RootMismatch,
    /// An envelope does not follow the one before it in the tenant's log.
    #[error("the envelope does not follow the previous one: {0}")]
    ChainBroken(&'static str),
    /// The text is not a well-formed envelope.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The signed note did not verify.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The leaf hash of one event: `merkle::leaf_hash(event.canonical_bytes())`.
pub fn event_leaf_hash(event: &AuditEvent) -> Result<Hash, serde_json::Error> {
    Ok(merkle::leaf_hash(&event.canonical_bytes()?))
}

/// The Merkle root over the events' leaf hashes, in order.
pub fn events_root(events: &[AuditEvent]) -> Result<Hash, EnvelopeError> {
    let mut hashes = Vec::with_capacity(events.len());
    for (index, e) in events.iter().enumerate() {
        hashes.push(event_leaf_hash(e).map_err(|err| EnvelopeError::Encoding {
            index,
            reason: err.to_string(),
        })?);
    }
    Ok(merkle::root(&hashes))
}

/// A sealed turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The tenant whose log the envelope joins.
    pub tenant: TenantId,
    /// The turn, or `None` for a batch of events without a turn.
    pub turn: Option<TurnId>,
    /// The tenant-wide sequence number of the first event.
    pub first_seq: u64,
    /// The tenant-wide sequence number of the last event.
    pub last_seq: u64,
    /// The number of events.
    pub event_count: u64,
    /// The Merkle root of the events' leaf hashes.
    pub events_root: Hash,
    /// The leaf hash of the previous envelope's text, or
    /// [`GENESIS_PREVIOUS`].
    pub previous: Hash,
    /// When the envelope was sealed, in Unix milliseconds, as the caller
    /// reports it.
    pub sealed_at_ms: u64,
}

impl Envelope {
    /// Seals `events`, which must all belong to `tenant` and `turn` and get
    /// the sequence numbers `first_seq, first_seq + 1, ...` in order.
    pub fn build(
        tenant: TenantId,
        turn: Option<TurnId>,
        first_seq: u64,
        events: &[AuditEvent],
        previous: Hash,
        sealed_at_ms: u64,
    ) -> Result<Self, EnvelopeError> {
        if events.is_empty() {
            return Err(EnvelopeError::NoEvents);
        }
        check_membership(&tenant, turn.as_ref(), events)?;
        let event_count = events.len() as u64;
        let last_seq = first_seq
            .checked_add(event_count - 1)
            .ok_or(EnvelopeError::SequenceOverflow)?;
        Ok(Self {
            tenant,
            turn,
            first_seq,
            last_seq,
            event_count,
            events_root: events_root(events)?,
            previous,
            sealed_at_ms,
        })
    }

    /// The note text: the nine lines of the module documentation.
    pub fn to_text(&self) -> String {
        let turn = self.turn.as_ref().map_or(NO_TURN, TurnId::as_str);
        format!(
            "{ENVELOPE_HEADER}\n{}\n{turn}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.tenant,
            self.first_seq,
            self.last_seq,
            self.event_count,
            STANDARD.encode(self.events_root),
            STANDARD.encode(self.previous),
            self.sealed_at_ms,
        )
    }

    /// The envelope's leaf hash in the tenant's log: the RFC 6962 leaf hash
    /// of [`Envelope::to_text`].
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(self.to_text().as_bytes())
    }

    /// Parses a note text strictly.
    pub fn parse(text: &str) -> Result<Self, EnvelopeError> {
        let body = text.strip_suffix('\n').ok_or(EnvelopeError::Malformed(
            "the text does not end in a newline",
        ))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [header, tenant, turn, first, last, count, root, previous, at] = lines.as_slice()
        else {
            return Err(EnvelopeError::Malformed(
                "an envelope has exactly nine lines",
            ));
        };
        if *header != ENVELOPE_HEADER {
            return Err(EnvelopeError::Malformed(
                "the first line is not aibox-envelope/v1",
            ));
        }
        let tenant =
            TenantId::new(*tenant).map_err(|_| EnvelopeError::Malformed("invalid tenant id"))?;
        let turn = if *turn == NO_TURN {
            None
        } else {
            Some(TurnId::new(*turn).map_err(|_| EnvelopeError::Malformed("invalid turn id"))?)
        };
        let number = |s: &str| {
            parse_decimal(s).ok_or(EnvelopeError::Malformed(
                "a number is not canonical decimal",
            ))
        };
        let first_seq = number(first)?;
        let last_seq = number(last)?;
        let event_count = number(count)?;
        let hash = |s: &str| {
            STANDARD
                .decode(s)
                .ok()
                .and_then(|h| Hash::try_from(h.as_slice()).ok())
                .ok_or(EnvelopeError::Malformed(
                    "a hash is not the base64 of 32 bytes",
                ))
        };
        let events_root = hash(root)?;
        let previous = hash(previous)?;
        let sealed_at_ms = number(at)?;
        if event_count == 0 || last_seq.checked_sub(first_seq) != Some(event_count - 1) {
            return Err(EnvelopeError::Malformed(
                "the sequence range does not hold exactly the counted events",
            ));
        }
        Ok(Self {
            tenant,
            turn,
            first_seq,
            last_seq,
            event_count,
            events_root,
            previous,
            sealed_at_ms,
        })
    }

    /// Signs the envelope and returns the signed note.
    pub fn sign(&self, key: &NoteSigner) -> Result<String, EnvelopeError> {
        Ok(note::sign(&self.to_text(), &[key])?)
    }

    /// Checks that this envelope directly follows `previous` in the same
    /// tenant's log: same tenant, `previous` line equal to the previous
    /// envelope's leaf hash, and sequence numbers continuing without a gap.
    pub fn check_follows(&self, previous: &Envelope) -> Result<(), EnvelopeError> {
        if self.tenant != previous.tenant {
            return Err(EnvelopeError::ChainBroken("another tenant"));
        }
        if self.previous != previous.leaf_hash() {
            return Err(EnvelopeError::ChainBroken(
                "the previous hash is not the previous envelope's leaf hash",
            ));
        }
        if previous.last_seq.checked_add(1) != Some(self.first_seq) {
            return Err(EnvelopeError::ChainBroken(
                "the sequence numbers do not continue",
            ));
        }
        Ok(())
    }

    /// Checks that `events` are exactly the sealed events, in order.
    pub fn check_events(&self, events: &[AuditEvent]) -> Result<(), EnvelopeError> {
        let got = events.len() as u64;
        if got != self.event_count {
            return Err(EnvelopeError::CountMismatch {
                expected: self.event_count,
                got,
            });
        }
        check_membership(&self.tenant, self.turn.as_ref(), events)?;
        if events_root(events)? != self.events_root {
            return Err(EnvelopeError::RootMismatch);
        }
        Ok(())
    }
}

fn check_membership(
    tenant: &TenantId,
    turn: Option<&TurnId>,
    events: &[AuditEvent],
) -> Result<(), EnvelopeError> {
    for (index, e) in events.iter().enumerate() {
        if &e.tenant != tenant {
            return Err(EnvelopeError::TenantMismatch { index });
        }
        if e.turn.as_ref() != turn {
            return Err(EnvelopeError::TurnMismatch { index });
        }
    }
    Ok(())
}

/// Opens a signed envelope: it must carry a valid signature of one of
/// `keys` (the tenant's envelope verifier keys; several during a key
/// rotation) and be well formed.
pub fn open_envelope(signed: &[u8], keys: &[NoteVerifier]) -> Result<Envelope, EnvelopeError> {
    let opened = note::open(signed, keys)?;
    Envelope::parse(&opened.text)
}

/// Opens a signed envelope with [`open_envelope`] and checks that `events`
/// are exactly its events: same tenant and turn, same number, same order,
/// same bytes.
pub fn verify_envelope(
    signed: &[u8],
    events: &[AuditEvent],
    keys: &[NoteVerifier],
) -> Result<Envelope, EnvelopeError> {
    let envelope = open_envelope(signed, keys)?;
    envelope.check_events(events)?;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aibox_core::audit::{EventKind, TurnStatus};

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn turn() -> TurnId {
        TurnId::new("0190a5b2-0000-7000-8000-000000000001").unwrap()
    }

    fn event(t: &str, turn: Option<TurnId>, at_ms: i64) -> AuditEvent {
        AuditEvent {
            tenant: tenant(t),
            turn,
            request_id: None,
            at_ms,
            kind: EventKind::TurnEnd {
                status: TurnStatus::Ok,
                duration_ms: 5,
            },
        }
    }

    fn events() -> Vec<AuditEvent> {
        (0..5)
            .map(|i| event("acme", Some(turn()), 1_700_000_000_000 + i))
            .collect()
    }

    fn key() -> NoteSigner {
        NoteSigner::from_seed("aibox.local/audit/acme/envelope", &[5; 32]).unwrap()
    }

    #[test]
    fn text_format_is_exact_and_round_trips() {
        let evs = events();
        let env = Envelope::build(
            tenant("acme"),
            Some(turn()),
            10,
            &evs,
            GENESIS_PREVIOUS,
            1_700_000_000_999,
        )
        .unwrap();
        assert_eq!(env.last_seq, 14);
        assert_eq!(env.event_count, 5);
        let root = STANDARD.encode(env.events_root);
        assert_eq!(
            env.to_text(),
            format!(
                "aibox-envelope/v1\nacme\n0190a5b2-0000-7000-8000-000000000001\n10\n14\n5\n{root}\n\
                 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n1700000000999\n"
            )
        );
        assert_eq!(Envelope::parse(&env.to_text()).unwrap(), env);
        assert_eq!(env.leaf_hash(), merkle::leaf_hash(env.to_text().as_bytes()));
        // The root is the RFC 6962 root over the events' canonical bytes.
        let leaves: Vec<Hash> = evs
            .iter()
            .map(|e| merkle::leaf_hash(&e.canonical_bytes().unwrap()))
            .collect();
        assert_eq!(env.events_root, merkle::root(&leaves));
    }

    #[test]
    fn turnless_batches_use_a_star() {
        let evs = vec![event("acme", None, 1), event("acme", None, 2)];
        let env = Envelope::build(tenant("acme"), None, 0, &evs, GENESIS_PREVIOUS, 3).unwrap();
        assert!(
            env.to_text()
                .starts_with("aibox-envelope/v1\nacme\n*\n0\n1\n2\n")
        );
        assert_eq!(Envelope::parse(&env.to_text()).unwrap(), env);
        env.check_events(&evs).unwrap();
        // A turn event in a turnless batch, and the reverse, are refused.
        let mixed = vec![event("acme", None, 1), event("acme", Some(turn()), 2)];
        assert_eq!(
            Envelope::build(tenant("acme"), None, 0, &mixed, GENESIS_PREVIOUS, 3),
            Err(EnvelopeError::TurnMismatch { index: 1 })
        );
        assert_eq!(
            Envelope::build(tenant("acme"), Some(turn()), 0, &mixed, GENESIS_PREVIOUS, 3),
            Err(EnvelopeError::TurnMismatch { index: 0 })
        );
    }

    #[test]
    fn build_refuses_bad_input() {
        assert_eq!(
            Envelope::build(tenant("acme"), Some(turn()), 0, &[], GENESIS_PREVIOUS, 0),
            Err(EnvelopeError::NoEvents)
        );
        let mut evs = events();
        evs[2].tenant = tenant("other");
        assert_eq!(
            Envelope::build(tenant("acme"), Some(turn()), 0, &evs, GENESIS_PREVIOUS, 0),
            Err(EnvelopeError::TenantMismatch { index: 2 })
        );
        assert_eq!(
            Envelope::build(
                tenant("acme"),
                Some(turn()),
                u64::MAX - 3,
                &events(),
                GENESIS_PREVIOUS,
                0
            ),
            Err(EnvelopeError::SequenceOverflow)
        );
        assert!(
            Envelope::build(
                tenant("acme"),
                Some(turn()),
                u64::MAX - 4,
                &events(),
                GENESIS_PREVIOUS,
                0
            )
            .is_ok()
        );
    }

    #[test]
    fn verify_detects_dropped_reordered_modified_and_foreign_events() {
        let evs = events();
        let env =
            Envelope::build(tenant("acme"), Some(turn()), 0, &evs, GENESIS_PREVIOUS, 9).unwrap();
        let signed = env.sign(&key()).unwrap();
        let v = [key().verifier()];
        assert_eq!(verify_envelope(signed.as_bytes(), &evs, &v).unwrap(), env);

        let mut dropped = evs.clone();
        dropped.remove(1);
        assert_eq!(
            verify_envelope(signed.as_bytes(), &dropped, &v),
            Err(EnvelopeError::CountMismatch {
                expected: 5,
                got: 4
            })
        );
        let mut reordered = evs.clone();
        reordered.swap(0, 1);
        assert_eq!(
            verify_envelope(signed.as_bytes(), &reordered, &v),
            Err(EnvelopeError::RootMismatch)
        );
        let mut modified = evs.clone();
        modified[4].at_ms += 1;
        assert_eq!(
            verify_envelope(signed.as_bytes(), &modified, &v),
            Err(EnvelopeError::RootMismatch)
        );
        let mut replaced = evs.clone();
        replaced[3] = evs[2].clone();
        assert_eq!(
            verify_envelope(signed.as_bytes(), &replaced, &v),
            Err(EnvelopeError::RootMismatch)
        );
        let mut foreign = evs.clone();
        foreign[0].tenant = tenant("other");
        assert_eq!(
            verify_envelope(signed.as_bytes(), &foreign, &v),
            Err(EnvelopeError::TenantMismatch { index: 0 })
        );
        let mut other_turn = evs.clone();
        other_turn[0].turn = None;
        assert_eq!(
            verify_envelope(signed.as_bytes(), &other_turn, &v),
            Err(EnvelopeError::TurnMismatch { index: 0 })
        );
    }

    #[test]
    fn verify_detects_tampered_envelopes_and_wrong_keys() {
        let evs = events();
        let env =
            Envelope::build(tenant("acme"), Some(turn()), 0, &evs, GENESIS_PREVIOUS, 9).unwrap();
        let signed = env.sign(&key()).unwrap();
        let v = [key().verifier()];
        // The tenant line rewritten to another tenant breaks the signature.
        let moved = signed.replacen("\nacme\n", "\nother\n", 1);
        assert!(matches!(
            verify_envelope(moved.as_bytes(), &evs, &v),
            Err(EnvelopeError::Note(NoteError::InvalidSignature { .. }))
        ));
        // Another key does not verify it.
        let other = NoteSigner::from_seed("aibox.local/audit/acme/envelope", &[6; 32]).unwrap();
        assert_eq!(
            verify_envelope(signed.as_bytes(), &evs, &[other.verifier()]),
            Err(EnvelopeError::Note(NoteError::NoKnownSignature))
        );
        // A correctly signed envelope for another tenant does not verify these
        // events.
        let foreign_evs: Vec<AuditEvent> =
            (0..5).map(|i| event("other", Some(turn()), i)).collect();
        let foreign = Envelope::build(
            tenant("other"),
            Some(turn()),
            0,
            &foreign_evs,
            GENESIS_PREVIOUS,
            9,
        )
        .unwrap()
        .sign(&key())
        .unwrap();
        assert_eq!(
            verify_envelope(foreign.as_bytes(), &evs, &v),
            Err(EnvelopeError::TenantMismatch { index: 0 })
        );
    }

    #[test]
    fn parse_is_strict() {
        let env = Envelope::build(tenant("acme"), Some(turn()), 3, &events(), [1; 32], 9).unwrap();
        let text = env.to_text();
        let lines: Vec<&str> = text.lines().collect();
        let with = |i: usize, v: &str| {
            let mut l = lines.clone();
            l[i] = v;
            format!("{}\n", l.join("\n"))
        };
        let bad = [
            text.trim_end().to_owned(),
            format!("{text}extra\n"),
            with(0, "aibox-envelope/v2"),
            with(1, "a b"),
            with(2, "not a turn!"),
            with(2, ""),
            with(3, "03"),
            with(4, "8"),
            with(5, "0"),
            with(6, "AAAA"),
            with(7, ""),
            with(8, "-1"),
        ];
        for b in bad {
            assert!(Envelope::parse(&b).is_err(), "{b:?}");
        }
        let zero = Envelope::parse(&with(5, "0").replace("\n3\n7\n", "\n3\n2\n"));
        assert!(zero.is_err());
    }
}

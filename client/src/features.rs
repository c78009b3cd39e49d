//! What the client knows of each server's implementation (PROTOCOL.md §5.13, §5.14, §8): its
//! `Features`, asked once per server and cached, and the local check of a request against
//! them, so that a request the server would refuse is never sent.

use std::sync::{Mutex, PoisonError};

use forkserver_protocol::{spawn_flags, ErrorCode, Features, Message, Revision, Spawn, Tag};

use crate::error::{Error, Result};

/// The `Features` of one server, by the generation of the server they came from (a launched
/// server's relaunch makes a new generation; a server at a path is generation 0). `None`
/// inside means a server before rev 0.6, which has no `Features`.
#[derive(Debug, Default)]
pub(crate) struct FeatureCache {
    known: Mutex<Option<(u64, Option<Features>)>>,
}

impl FeatureCache {
    /// The cached answer of the server of `generation`, if there is one.
    pub(crate) fn get(&self, generation: u64) -> Option<Option<Features>> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.and_then(|(g, f)| (g == generation).then_some(f))
    }

    pub(crate) fn set(&self, generation: u64, features: Option<Features>) {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = Some((generation, features));
    }

    /// Caches what `reply`, the answer to `FeaturesRequest` of the server of `generation`,
    /// says ([`from_reply`]).
    ///
    /// # Errors
    /// As [`from_reply`]; nothing is cached then.
    pub(crate) fn keep(&self, generation: u64, reply: Message) -> Result<Option<Features>> {
        let features = from_reply(reply)?;
        self.set(generation, features);
        Ok(features)
    }

    /// Forgets the answer: the next request asks again.
    pub(crate) fn forget(&self) {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// What the reply to `FeaturesRequest` says: the server's `Features`, or `None` for a server
/// before rev 0.6. Such a server knows no tag 0x13: it answers `Error(Malformed)` and closes
/// (PROTOCOL.md §5.13, §8). Our frame is valid, so a `Malformed` reply means exactly that; no
/// message text is read.
///
/// # Errors
/// [`Error::Server`] for any other error reply, [`Error::Protocol`] for another message.
pub(crate) fn from_reply(reply: Message) -> Result<Option<Features>> {
    match reply {
        Message::Features(f) => Ok(Some(f)),
        Message::Error(e) if e.code() == ErrorCode::Malformed => Ok(None),
        Message::Error(e) => Err(e.into()),
        other => Err(Error::unexpected(other.tag(), "Features")),
    }
}

/// The `Spawn.flags` bits a server implements: its `Features::spawn_flags`, or, for a server
/// before rev 0.6 (`None`), the bits of the first revisions only (PROTOCOL.md §8): no
/// `KEEP_CONNECTION`, none of rev 0.5.
pub(crate) fn implemented(features: Option<&Features>) -> u32 {
    features.map_or(
        spawn_flags::known_in(Revision::FIRST),
        Features::spawn_flags,
    )
}

/// Checks that the server implements every flag bit `spawn` sets.
///
/// # Errors
/// [`Error::Unsupported`] naming the lowest bit it lacks.
pub(crate) fn check(features: Option<&Features>, spawn: &Spawn) -> Result<()> {
    let missing = spawn.flags() & !implemented(features);
    if missing == 0 {
        return Ok(());
    }
    let bit = missing & missing.wrapping_neg();
    Err(Error::Unsupported {
        option: spawn_flags::name(bit).unwrap_or("an unnamed Spawn flag"),
        server: features.map(Features::revision),
    })
}

/// Checks that the server accepts requests of `tag`, the message `name`.
///
/// # Errors
/// [`Error::Unsupported`] naming `name`, for a server whose `Features` lack it or that has
/// none (before rev 0.6).
pub(crate) fn check_request(
    features: Option<&Features>,
    tag: Tag,
    name: &'static str,
) -> Result<()> {
    if features.is_some_and(|f| f.accepts(tag)) {
        return Ok(());
    }
    Err(Error::Unsupported {
        option: name,
        server: features.map(Features::revision),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkserver_protocol::{EntryJob, FdMap, Job, SpawnOptions};

    fn spawn(options: SpawnOptions) -> Spawn {
        let job = Job::Entry(EntryJob::new("e", Vec::new()).unwrap());
        Spawn::new(options, FdMap::new(), job).unwrap()
    }

    #[test]
    fn a_server_before_0_6_has_the_first_bits_only() {
        assert_eq!(implemented(None), 0b1_1111);
        assert!(check(None, &spawn(SpawnOptions::default())).is_ok());
        let mut o = SpawnOptions::default();
        o.credentials.gid = Some(5);
        o.keep_connection = true;
        let e = check(None, &spawn(o)).unwrap_err();
        // The lowest missing bit is named.
        assert!(
            matches!(
                e,
                Error::Unsupported {
                    option: "KEEP_CONNECTION",
                    server: None
                }
            ),
            "{e:?}"
        );
        assert!(check(Some(&Features::current()), &spawn(o)).is_ok());
    }

    #[test]
    fn a_malformed_reply_means_a_server_before_0_6() {
        use forkserver_protocol::ErrorReply;
        let f = Features::current();
        assert_eq!(from_reply(Message::Features(f)).unwrap(), Some(f));
        let old = ErrorReply::new(ErrorCode::Malformed, 0, "unknown tag");
        assert_eq!(from_reply(Message::Error(old)).unwrap(), None);
        let busy = ErrorReply::new(ErrorCode::ResourceExhausted, 0, "full");
        assert!(matches!(
            from_reply(Message::Error(busy)),
            Err(Error::Server {
                code: ErrorCode::ResourceExhausted,
                ..
            })
        ));
        assert!(from_reply(Message::Signaled).is_err());
    }

    #[test]
    fn the_cache_answers_for_its_generation_only() {
        let c = FeatureCache::default();
        assert_eq!(c.get(0), None);
        c.set(3, None);
        assert_eq!(c.get(3), Some(None));
        assert_eq!(c.get(4), None);
        c.set(4, Some(Features::current()));
        assert_eq!(c.get(4), Some(Some(Features::current())));
        c.forget();
        assert_eq!(c.get(4), None);
    }
}

//! `Arbitrary` for [`Message`] yielding only valid messages: shared by the fuzzer and the
//! property tests, so both explore the same space.
#![forbid(unsafe_code)]

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::codec::*;
use crate::{CHALLENGE_LEN, MAX_FDS, MAX_GROUPS, MAX_PGID, MAX_SIGNAL, MAX_TARGET_FD};

fn bytes_without(u: &mut Unstructured<'_>, max: usize, banned: &[u8]) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?;
    let mut v = Vec::with_capacity(len);
    for _ in 0..len {
        let b = u8::arbitrary(u)?;
        v.push(if banned.contains(&b) { b'x' } else { b });
    }
    Ok(v)
}

fn nonempty(mut v: Vec<u8>) -> Vec<u8> {
    if v.is_empty() {
        v.push(b'a');
    }
    v
}

impl<'a> Arbitrary<'a> for FdMap {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(0..=MAX_FDS)?;
        let mut map = FdMap::new();
        for i in 0..n {
            let t = if bool::arbitrary(u)? {
                i as u32
            } else {
                u.int_in_range(0..=MAX_TARGET_FD)?
            };
            // Duplicates are skipped: the map stays valid.
            let _ = map.push(t);
        }
        Ok(map)
    }
}

impl<'a> Arbitrary<'a> for Job {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        if bool::arbitrary(u)? {
            let name = String::arbitrary(u)?;
            let mut name: String = name.chars().take(60).collect();
            if name.is_empty() {
                name.push('e');
            }
            let payload = bytes_without(u, 512, &[])?;
            return Ok(Job::Entry(
                EntryJob::new(name, payload).map_err(|_| arbitrary::Error::IncorrectFormat)?,
            ));
        }
        let fail = |_| arbitrary::Error::IncorrectFormat;
        let mut job = ExecJob::new(nonempty(bytes_without(u, 64, &[0])?)).map_err(fail)?;
        if bool::arbitrary(u)? {
            job.set_arg0(bytes_without(u, 32, &[0])?).map_err(fail)?;
        }
        for _ in 0..u.int_in_range(0..=8)? {
            job.push_arg(bytes_without(u, 48, &[0])?).map_err(fail)?;
        }
        job.set_env_clear(bool::arbitrary(u)?);
        for _ in 0..u.int_in_range(0..=6)? {
            let k = nonempty(bytes_without(u, 16, &[0, b'='])?);
            job.push_env(k, bytes_without(u, 32, &[0])?).map_err(fail)?;
        }
        for _ in 0..u.int_in_range(0..=3)? {
            let k = nonempty(bytes_without(u, 16, &[0, b'='])?);
            job.push_env_remove(k).map_err(fail)?;
        }
        if bool::arbitrary(u)? {
            job.set_cwd(Some(nonempty(bytes_without(u, 64, &[0])?)))
                .map_err(fail)?;
        }
        Ok(Job::Exec(job))
    }
}

impl<'a> Arbitrary<'a> for SpawnOptions {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let id = |u: &mut Unstructured<'a>| u.int_in_range(0..=u32::MAX - 1);
        let groups = if bool::arbitrary(u)? {
            let n = u.int_in_range(0..=MAX_GROUPS)?;
            let gids = (0..n).map(|_| id(u)).collect::<Result<Vec<_>>>()?;
            Some(Groups::new(&gids).map_err(|_| arbitrary::Error::IncorrectFormat)?)
        } else {
            None
        };
        let credentials = Credentials {
            uid: if bool::arbitrary(u)? {
                Some(id(u)?)
            } else {
                None
            },
            gid: if bool::arbitrary(u)? {
                Some(id(u)?)
            } else {
                None
            },
            groups,
        };
        Ok(SpawnOptions {
            session: match u.int_in_range(0..=3u8)? {
                0 => Session::Inherit,
                1 => Session::NewProcessGroup,
                2 => Session::NewSession,
                _ => Session::JoinProcessGroup(u.int_in_range(1..=MAX_PGID)?),
            },
            credentials,
            want_pidfd: bool::arbitrary(u)?,
            pid_after_exec: bool::arbitrary(u)?,
            kill_on_disconnect: bool::arbitrary(u)?,
            keep_connection: bool::arbitrary(u)?,
            deadline_ms: Option::arbitrary(u)?,
            want_rusage: bool::arbitrary(u)?,
            rlimits: if bool::arbitrary(u)? {
                let n = u.int_in_range(0..=crate::MAX_RLIMITS)?;
                let mut r = crate::Rlimits::default();
                for _ in 0..n {
                    let hard = u64::arbitrary(u)?;
                    let l = crate::Rlimit {
                        resource: u.int_in_range(0..=15)?,
                        soft: u.int_in_range(0..=hard)?,
                        hard,
                    };
                    r.push(l).map_err(|_| arbitrary::Error::IncorrectFormat)?;
                }
                Some(r)
            } else {
                None
            },
            umask: match bool::arbitrary(u)? {
                true => Some(u.int_in_range(0..=crate::MAX_UMASK)?),
                false => None,
            },
            nice: match bool::arbitrary(u)? {
                true => Some(u.int_in_range(crate::NICE_RANGE)?),
                false => None,
            },
            no_new_privs: bool::arbitrary(u)?,
            oom_score_adj: match bool::arbitrary(u)? {
                true => Some(u.int_in_range(crate::OOM_SCORE_ADJ_RANGE)?),
                false => None,
            },
            grace_ms: Option::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Message {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let fail = |_| arbitrary::Error::IncorrectFormat;
        // Every tag of the `messages!` table: a message added there fails to compile here
        // until it is generated too.
        Ok(match *u.choose(&Tag::ALL)? {
            Tag::Hello => {
                let a = u.int_in_range(1..=u16::MAX)?;
                let b = u.int_in_range(a..=u16::MAX)?;
                Message::Hello(Hello::new(a, b).map_err(fail)?)
            }
            Tag::HelloOk => {
                let auth = if bool::arbitrary(u)? {
                    AuthMethod::HmacSha256 {
                        challenge: <[u8; CHALLENGE_LEN]>::arbitrary(u)?,
                    }
                } else {
                    AuthMethod::None
                };
                Message::HelloOk(HelloOk::new(u.int_in_range(1..=u16::MAX)?, auth).map_err(fail)?)
            }
            Tag::Auth => Message::Auth(Auth {
                response: Arbitrary::arbitrary(u)?,
                challenge: Arbitrary::arbitrary(u)?,
            }),
            Tag::AuthOk => Message::AuthOk(AuthOk {
                response: Arbitrary::arbitrary(u)?,
            }),
            Tag::Spawn => Message::Spawn(
                Spawn::new(
                    SpawnOptions::arbitrary(u)?,
                    FdMap::arbitrary(u)?,
                    Job::arbitrary(u)?,
                )
                .map_err(fail)?,
            ),
            Tag::Signal => {
                Message::Signal(Signal::new(u.int_in_range(1..=MAX_SIGNAL)?).map_err(fail)?)
            }
            Tag::StatusRequest => Message::StatusRequest,
            Tag::FeaturesRequest => Message::FeaturesRequest,
            Tag::MetricsRequest => Message::MetricsRequest,
            Tag::Pid => Message::Pid(
                Pid::new(u.int_in_range(1..=i32::MAX)?, bool::arbitrary(u)?).map_err(fail)?,
            ),
            Tag::Exit => Message::Exit(
                Exit::new(
                    u.int_in_range(-(MAX_SIGNAL as i32)..=255)?,
                    bool::arbitrary(u)?,
                    bool::arbitrary(u)?,
                )
                .map_err(fail)?
                .with_usage(if bool::arbitrary(u)? {
                    Some(ResourceUsage {
                        user_us: Arbitrary::arbitrary(u)?,
                        system_us: Arbitrary::arbitrary(u)?,
                        maxrss_kib: Arbitrary::arbitrary(u)?,
                    })
                } else {
                    None
                }),
            ),
            Tag::Metrics => Message::Metrics(Metrics {
                uptime_s: Arbitrary::arbitrary(u)?,
                spawns_exec_ok: Arbitrary::arbitrary(u)?,
                orphans_reaped: Arbitrary::arbitrary(u)?,
                pool_idle: Arbitrary::arbitrary(u)?,
                setup_failed_credentials: Arbitrary::arbitrary(u)?,
                setup_failed_chdir: Arbitrary::arbitrary(u)?,
                ..Metrics::default()
            }),
            Tag::Signaled => Message::Signaled,
            Tag::Status => {
                let v: String = String::arbitrary(u)?.chars().take(16).collect();
                Message::Status(
                    Status::new(
                        u.int_in_range(1..=u16::MAX)?,
                        u.int_in_range(1..=i32::MAX)?,
                        Arbitrary::arbitrary(u)?,
                        Arbitrary::arbitrary(u)?,
                        Arbitrary::arbitrary(u)?,
                        v,
                    )
                    .map_err(fail)?,
                )
            }
            Tag::Features => Message::Features(
                Features::new(
                    Revision::new(u.int_in_range(0..=u16::MAX)?, Arbitrary::arbitrary(u)?)
                        .max(Revision::R0_6),
                    Arbitrary::arbitrary(u)?,
                    Arbitrary::arbitrary(u)?,
                )
                .map_err(fail)?,
            ),
            Tag::Error => {
                let code = *u.choose(ErrorCode::ALL)?;
                let msg: String = String::arbitrary(u)?.chars().take(80).collect();
                Message::Error(ErrorReply::new(code, Arbitrary::arbitrary(u)?, msg))
            }
        })
    }
}

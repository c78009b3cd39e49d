//! The jobs a `Spawn` carries (PROTOCOL.md §5.5.2 entry, §5.5.3 exec).

use std::sync::Arc;

use crate::codec::wire::{put_bytes16, put_bytes32, Reader, Sink};
use crate::error::{BuildError, DecodeError, Field, Limit, Snippet};
use crate::{MAX_ARGS, MAX_ARG_LEN, MAX_BODY_LEN, MAX_ENTRY_NAME_LEN, MAX_ENV, MAX_PATH_LEN};

/// A registered entry point of a zygote server, by name, with an opaque payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryJob {
    name: String,
    /// Shared, so that a job cloned for each attempt of a request (a client's `Spawn` is
    /// built again per attempt) does not copy a payload of up to a MiB.
    payload: Arc<Vec<u8>>,
}

impl EntryJob {
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty name, [`BuildError::LimitExceeded`] for a name
    /// over [`MAX_ENTRY_NAME_LEN`] bytes or a payload over [`MAX_BODY_LEN`].
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Result<Self, BuildError> {
        let name = name.into();
        let payload = payload.into();
        if name.is_empty() {
            return Err(BuildError::InvalidValue(Field::EntryName));
        }
        if name.len() > MAX_ENTRY_NAME_LEN {
            return Err(BuildError::limit(Limit::EntryName, name.len()));
        }
        if payload.len() > MAX_BODY_LEN {
            return Err(BuildError::limit(Limit::Body, payload.len()));
        }
        Ok(Self {
            name,
            payload: Arc::new(payload),
        })
    }

    /// The entry point's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The payload handed to the entry point.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Puts back the payload a lending decode left out (`codec/split.rs`).
    pub(crate) fn fill_lent(&mut self, payload: Vec<u8>) {
        self.payload = Arc::new(payload);
    }

    /// The payload, shared (a sender writes it from here: `codec/split.rs`).
    pub(crate) fn shared_payload(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.payload)
    }

    pub(super) fn encode(&self, out: &mut impl Sink) {
        put_bytes16(out, self.name.as_bytes());
        put_bytes32(out, &self.payload);
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.bytes16(MAX_ENTRY_NAME_LEN, Limit::EntryName)?;
        let name = core::str::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or(DecodeError::InvalidValue(Field::EntryName))?;
        let payload = r.bytes32(MAX_BODY_LEN, Limit::Body)?;
        let payload = if r.lend(payload) {
            Vec::new()
        } else {
            payload.to_vec()
        };
        Ok(Self {
            name: name.to_owned(),
            payload: Arc::new(payload),
        })
    }
}

/// An `execve` of a program: path, argv, environment and working directory, all as bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExecJob {
    program: Vec<u8>,
    args: Vec<Vec<u8>>,
    env_clear: bool,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    env_remove: Vec<Vec<u8>>,
    cwd: Option<Vec<u8>>,
}

/// `index`: the value's position in its list (argv, environment), 0 for a single value.
fn check_no_nul(b: &[u8], field: Field, index: usize) -> Result<(), BuildError> {
    if b.contains(&0) {
        Err(BuildError::Nul {
            field,
            index,
            value: Snippet::new(b),
        })
    } else {
        Ok(())
    }
}

/// An environment name (a key, or a name to remove): not empty, no `=`, no NUL.
fn check_env_name(name: &[u8], field: Field, index: usize) -> Result<(), BuildError> {
    if name.is_empty() || name.contains(&b'=') {
        return Err(BuildError::InvalidValue(field));
    }
    check_no_nul(name, field, index)
}

impl ExecJob {
    /// Runs `program`, with `argv[0]` set to `program`. A program without a `/` is searched in
    /// the child's `PATH`, as `execvp` does.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty path or one holding a NUL byte,
    /// [`BuildError::LimitExceeded`] for a path over [`MAX_PATH_LEN`] bytes.
    pub fn new(program: impl Into<Vec<u8>>) -> Result<Self, BuildError> {
        let program = program.into();
        if program.is_empty() {
            return Err(BuildError::InvalidValue(Field::Program));
        }
        check_no_nul(&program, Field::Program, 0)?;
        if program.len() > MAX_PATH_LEN {
            return Err(BuildError::limit(Limit::PathLen, program.len()));
        }
        let arg0 = program.clone();
        let mut job = Self {
            program,
            args: Vec::new(),
            env_clear: false,
            env: Vec::new(),
            env_remove: Vec::new(),
            cwd: None,
        };
        job.push_arg(arg0)?;
        Ok(job)
    }

    /// Appends an argument.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] if it holds a NUL byte, [`BuildError::LimitExceeded`] past
    /// [`MAX_ARGS`] arguments or [`MAX_ARG_LEN`] bytes.
    pub fn push_arg(&mut self, arg: impl Into<Vec<u8>>) -> Result<(), BuildError> {
        let arg = arg.into();
        check_no_nul(&arg, Field::Arg, self.args.len())?;
        if arg.len() > MAX_ARG_LEN {
            return Err(BuildError::limit(Limit::ArgLen, arg.len()));
        }
        if self.args.len() >= MAX_ARGS {
            return Err(BuildError::limit(Limit::Args, self.args.len() + 1));
        }
        self.args.push(arg);
        Ok(())
    }

    /// Replaces `argv[0]` (which [`ExecJob::new`] sets to the program path).
    ///
    /// # Errors
    /// As [`ExecJob::push_arg`].
    pub fn set_arg0(&mut self, arg0: impl Into<Vec<u8>>) -> Result<(), BuildError> {
        let arg0 = arg0.into();
        check_no_nul(&arg0, Field::Arg, 0)?;
        if arg0.len() > MAX_ARG_LEN {
            return Err(BuildError::limit(Limit::ArgLen, arg0.len()));
        }
        self.args[0] = arg0;
        Ok(())
    }

    /// Sets `key=value` in the child's environment; a later entry for the same key wins.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty key, a key holding `=` or NUL, or a value
    /// holding NUL; [`BuildError::LimitExceeded`] past [`MAX_ENV`] entries or when `key=value`
    /// is over [`MAX_ARG_LEN`] bytes.
    pub fn push_env(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), BuildError> {
        let (key, value) = (key.into(), value.into());
        let index = self.env.len();
        check_env_name(&key, Field::EnvKey, index)?;
        check_no_nul(&value, Field::EnvValue, index)?;
        let len = key.len() + 1 + value.len();
        if len > MAX_ARG_LEN {
            return Err(BuildError::limit(Limit::ArgLen, len));
        }
        if self.env.len() >= MAX_ENV {
            return Err(BuildError::limit(Limit::Env, self.env.len() + 1));
        }
        self.env.push((key, value));
        Ok(())
    }

    /// Removes `name` from the environment the child inherits from the server (with
    /// [`ExecJob::set_env_clear`] there is nothing to remove). Removals apply before the
    /// entries of [`ExecJob::push_env`], so an entry for the same name still sets it.
    /// PROTOCOL.md §5.5.3, rev 0.5: a server of an earlier revision refuses the request.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] ([`Field::EnvRemove`]) for an empty name or one holding
    /// `=`, [`BuildError::Nul`] for one holding NUL; [`BuildError::LimitExceeded`] past
    /// [`MAX_ENV`] names or a name over [`MAX_ARG_LEN`] bytes.
    pub fn push_env_remove(&mut self, name: impl Into<Vec<u8>>) -> Result<(), BuildError> {
        let name = name.into();
        check_env_name(&name, Field::EnvRemove, self.env_remove.len())?;
        if name.len() > MAX_ARG_LEN {
            return Err(BuildError::limit(Limit::ArgLen, name.len()));
        }
        if self.env_remove.len() >= MAX_ENV {
            return Err(BuildError::limit(Limit::Env, self.env_remove.len() + 1));
        }
        self.env_remove.push(name);
        Ok(())
    }

    /// Starts the child's environment empty instead of from the server's.
    pub fn set_env_clear(&mut self, clear: bool) {
        self.env_clear = clear;
    }

    /// Sets the child's working directory (`None`: the server's).
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty path or one holding NUL,
    /// [`BuildError::LimitExceeded`] over [`MAX_PATH_LEN`] bytes.
    pub fn set_cwd(&mut self, cwd: Option<Vec<u8>>) -> Result<(), BuildError> {
        if let Some(c) = &cwd {
            if c.is_empty() {
                return Err(BuildError::InvalidValue(Field::Cwd));
            }
            check_no_nul(c, Field::Cwd, 0)?;
            if c.len() > MAX_PATH_LEN {
                return Err(BuildError::limit(Limit::PathLen, c.len()));
            }
        }
        self.cwd = cwd;
        Ok(())
    }

    /// The program path.
    pub fn program(&self) -> &[u8] {
        &self.program
    }

    /// argv, `argv[0]` included.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// Whether the child's environment starts empty.
    pub fn env_clear(&self) -> bool {
        self.env_clear
    }

    /// Environment entries set on top of the inherited (or empty) environment, in order.
    pub fn env(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.env
    }

    /// Names removed from the inherited environment, in order.
    pub fn env_remove(&self) -> &[Vec<u8>] {
        &self.env_remove
    }

    /// The working directory, if one is set.
    pub fn cwd(&self) -> Option<&[u8]> {
        self.cwd.as_deref()
    }

    pub(super) fn encode(&self, out: &mut impl Sink) {
        put_bytes16(out, &self.program);
        out.put_u16_le(self.args.len() as u16);
        for a in &self.args {
            put_bytes32(out, a);
        }
        out.put_u8(u8::from(self.env_clear));
        out.put_u16_le(self.env.len() as u16);
        for (k, v) in &self.env {
            put_bytes32(out, k);
            put_bytes32(out, v);
        }
        // Announced by ENV_REMOVE in the flags (`Spawn::flags`).
        if !self.env_remove.is_empty() {
            out.put_u16_le(self.env_remove.len() as u16);
            for n in &self.env_remove {
                put_bytes32(out, n);
            }
        }
        put_bytes16(out, self.cwd.as_deref().unwrap_or_default());
    }

    /// `removes`: the flags have `ENV_REMOVE`, so the removals follow the environment.
    pub(super) fn decode(r: &mut Reader<'_>, removes: bool) -> Result<Self, DecodeError> {
        let program = r.bytes16(MAX_PATH_LEN, Limit::PathLen)?;
        let mut job = ExecJob::new(program)?;
        let argc = usize::from(r.u16()?);
        // §5.5: 1 <= argc <= MAX_ARGS.
        if argc == 0 {
            return Err(DecodeError::InvalidValue(Field::Arg));
        }
        if argc > MAX_ARGS {
            return Err(DecodeError::LimitExceeded(Limit::Args));
        }
        job.args.clear();
        for _ in 0..argc {
            let a = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
            if a.contains(&0) {
                return Err(DecodeError::InvalidValue(Field::Arg));
            }
            job.args.push(a.to_vec());
        }
        job.env_clear = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::InvalidValue(Field::Bool)),
        };
        let envc = usize::from(r.u16()?);
        if envc > MAX_ENV {
            return Err(DecodeError::LimitExceeded(Limit::Env));
        }
        for _ in 0..envc {
            let k = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
            let v = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
            job.push_env(k, v)?;
        }
        if removes {
            let n = usize::from(r.u16()?);
            // §5.5.3: 1 <= unsetc <= MAX_ENV (0 would be the flag without its field).
            if n == 0 {
                return Err(DecodeError::InvalidValue(Field::EnvRemove));
            }
            if n > MAX_ENV {
                return Err(DecodeError::LimitExceeded(Limit::Env));
            }
            for _ in 0..n {
                let name = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
                job.push_env_remove(name)?;
            }
        }
        let cwd = r.bytes16(MAX_PATH_LEN, Limit::PathLen)?;
        if !cwd.is_empty() {
            job.set_cwd(Some(cwd.to_vec()))?;
        }
        Ok(job)
    }
}

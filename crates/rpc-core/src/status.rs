//! Status codes and the error type of every call.
//!
//! Codes follow gRPC's meanings so that operators read them the same way. A [`Status`] is what a
//! call fails with: the server's handler never sees it unless it returns one, and an application
//! error declared in a method's `Result<T, E>` is *not* a `Status` but a value the caller receives.

use std::fmt;

/// Why a call failed; the wire value of each code is fixed (see `docs/PROTOCOL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The call was cancelled, usually by the caller dropping it.
    Cancelled,
    /// An error that fits no other code.
    Unknown,
    /// The request could not be decoded or is invalid for the method.
    InvalidArgument,
    /// The deadline passed before the call completed.
    DeadlineExceeded,
    /// The caller may not call this method.
    PermissionDenied,
    /// A resource (connections, in-flight calls, rate) is exhausted; back off and retry.
    ResourceExhausted,
    /// The operation was rejected because the system is not in a state for it.
    FailedPrecondition,
    /// The call was aborted, for example by a conflict.
    Aborted,
    /// The service or method does not exist on the server.
    Unimplemented,
    /// A server-side invariant broke, for example a handler panicked.
    Internal,
    /// The service cannot be reached or is shutting down; safe to retry elsewhere.
    Unavailable,
    /// The caller did not prove who it is (no credentials, or invalid ones).
    Unauthenticated,
    /// The peer broke the wire protocol.
    Protocol,
}

impl Code {
    /// The code's value on the wire.
    pub const fn as_u16(self) -> u16 {
        match self {
            Code::Cancelled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
            Code::Protocol => 100,
        }
    }

    /// The code for a wire value; unknown values map to [`Code::Unknown`] so newer peers work.
    pub const fn from_u16(v: u16) -> Code {
        match v {
            1 => Code::Cancelled,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            16 => Code::Unauthenticated,
            100 => Code::Protocol,
            _ => Code::Unknown,
        }
    }

    /// The code's name in `SCREAMING_SNAKE_CASE`, as gRPC spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Protocol => "PROTOCOL",
        }
    }
}

impl Code {
    /// Every code, in the order of their wire values.
    pub const ALL: [Code; 13] = [
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::Unauthenticated,
        Code::Protocol,
    ];

    /// The code named `name` as [`Code::name`] spells it.
    pub fn from_name(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|code| code.name() == name)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed call: a [`Code`] and a message that says what happened and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    not_started: bool,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $fn:ident => $code:ident),* $(,)?) => {
        impl Status {
            $(
                $(#[$doc])*
                pub fn $fn(message: impl Into<String>) -> Status {
                    Status::new(Code::$code, message)
                }
            )*
        }
    };
}

constructors! {
    /// A [`Code::Cancelled`] status.
    cancelled => Cancelled,
    /// A [`Code::InvalidArgument`] status.
    invalid_argument => InvalidArgument,
    /// A [`Code::DeadlineExceeded`] status.
    deadline_exceeded => DeadlineExceeded,
    /// A [`Code::ResourceExhausted`] status.
    resource_exhausted => ResourceExhausted,
    /// A [`Code::FailedPrecondition`] status.
    failed_precondition => FailedPrecondition,
    /// A [`Code::Aborted`] status.
    aborted => Aborted,
    /// A [`Code::Unimplemented`] status.
    unimplemented => Unimplemented,
    /// A [`Code::Internal`] status.
    internal => Internal,
    /// A [`Code::Unavailable`] status.
    unavailable => Unavailable,
    /// A [`Code::PermissionDenied`] status.
    permission_denied => PermissionDenied,
    /// A [`Code::Unauthenticated`] status.
    unauthenticated => Unauthenticated,
    /// A [`Code::Protocol`] status.
    protocol => Protocol,
}

impl Status {
    /// A status with any code.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into(), not_started: false }
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Marks that the call never reached a handler, so retrying it cannot run it twice.
    pub fn with_not_started(mut self) -> Status {
        self.not_started = true;
        self
    }

    /// True when the call is known never to have reached a handler (for example it was refused
    /// by a go-away or the connection could not be opened); such calls are safe to retry even
    /// when the method is not idempotent.
    pub fn not_started(&self) -> bool {
        self.not_started
    }
}

impl Status {
    /// The status a boxed error from stock tower middleware stands for, so such middleware fits
    /// a server or client stack (with `tower::util::MapErrLayer::new(Status::from_box_error)`):
    /// a `Status` stays itself, tower's timeout becomes `DEADLINE_EXCEEDED`, its load shedding
    /// `RESOURCE_EXHAUSTED` (not started, so safe to retry elsewhere), and anything else
    /// `INTERNAL` with the error's message.
    pub fn from_box_error(error: tower::BoxError) -> Status {
        let error = match error.downcast::<Status>() {
            Ok(status) => return *status,
            Err(error) => error,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            Status::deadline_exceeded(format!("a timeout layer cut the call: {error}"))
        } else if error.is::<tower::load_shed::error::Overloaded>() {
            Status::resource_exhausted(format!("a load-shedding layer refused the call: {error}")).with_not_started()
        } else {
            Status::internal(format!("a layer failed the call: {error}"))
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

impl From<rpc_codecs::CodecError> for Status {
    fn from(err: rpc_codecs::CodecError) -> Status {
        Status::invalid_argument(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_wire_value() {
        for code in Code::ALL {
            assert_eq!(Code::from_u16(code.as_u16()), code);
            assert_eq!(Code::from_name(code.name()), Some(code));
        }
        assert_eq!(Code::from_u16(9999), Code::Unknown);
    }

    #[test]
    fn display_names_the_code_and_the_message() {
        let s = Status::unavailable("server shutting down; retry on another instance");
        assert_eq!(s.to_string(), "UNAVAILABLE: server shutting down; retry on another instance");
    }
}

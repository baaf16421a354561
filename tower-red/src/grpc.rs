//! gRPC status codes, without a dependency on tonic.
//!
//! The numeric values are those of the gRPC specification (`doc/statuscodes.md` in grpc/grpc).
//! With the `tonic` feature, [`GrpcCode`] converts to and from `tonic::Code`, the `status`
//! adapter turns rejections into trailers-only gRPC responses on a server, and the `client`
//! adapter turns them into the `tonic::Status` a generated client returns to its caller.

use std::fmt;

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)] // the variants are the gRPC specification's names
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a numeric value; values outside 0..=16 are `Unknown`, as the spec requires.
    pub fn from_i32(value: i32) -> GrpcCode {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(GrpcCode::Unknown)
    }

    /// Parses the ASCII decimal value of a `grpc-status` header; anything else is `Unknown`.
    pub fn from_header_bytes(bytes: &[u8]) -> GrpcCode {
        if bytes.is_empty() || bytes.len() > 2 || !bytes.iter().all(u8::is_ascii_digit) {
            return GrpcCode::Unknown;
        }
        let value = bytes
            .iter()
            .fold(0i32, |acc, b| acc * 10 + i32::from(b - b'0'));
        Self::from_i32(value)
    }

    /// The numeric value sent on the wire.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The upper-case name used by the specification, such as `UNAVAILABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The header value (`"14"`) for this code.
    pub fn header_value(self) -> &'static str {
        const VALUES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        VALUES[self as usize]
    }

    /// The gRPC code a client derives from an HTTP status when no `grpc-status` was sent
    /// (gRPC's `doc/http-grpc-status-mapping.md`).
    pub fn from_http_status(status: http::StatusCode) -> GrpcCode {
        match status.as_u16() {
            200 => GrpcCode::Ok,
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "tonic")]
impl From<GrpcCode> for tonic::Code {
    fn from(code: GrpcCode) -> tonic::Code {
        tonic::Code::from_i32(code.as_i32())
    }
}

#[cfg(feature = "tonic")]
impl From<tonic::Code> for GrpcCode {
    fn from(code: tonic::Code) -> GrpcCode {
        GrpcCode::from_i32(code as i32)
    }
}

#[cfg(feature = "tonic")]
pub mod client;
#[cfg(feature = "tonic")]
pub mod status;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip_every_code() {
        for code in GrpcCode::ALL {
            assert_eq!(
                GrpcCode::from_header_bytes(code.header_value().as_bytes()),
                code
            );
            assert_eq!(GrpcCode::from_i32(code.as_i32()), code);
        }
    }

    #[test]
    fn malformed_grpc_status_is_unknown() {
        for bad in [&b""[..], b"-1", b"17", b"abc", b"123", b" 1"] {
            assert_eq!(
                GrpcCode::from_header_bytes(bad),
                GrpcCode::Unknown,
                "{bad:?}"
            );
        }
    }
}

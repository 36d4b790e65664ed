//! Numbers and addresses written as text without `core::fmt`, for the per-request output
//! (decision headers, `X-Forwarded-For`, access log lines): `write!` with format specs was a
//! seventh of the decision headers' cost and most of an access log line's in callgrind.

use std::net::IpAddr;

/// Append `n` in decimal, zero-padded to at least `width` digits.
pub(crate) fn push_decimal(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width.max(1) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // ASCII digits only.
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// `ip` in its usual text form; an IPv4 address without `core::fmt` (its `Display` was a
/// quarter of `forward_headers` in callgrind).
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u64::from(octet), 1);
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{push_decimal, push_ip};

    #[test]
    fn decimals_are_written_like_format_with_zero_padding() {
        for (n, width) in [
            (0, 1),
            (7, 1),
            (42, 1),
            (0, 6),
            (5, 6),
            (123_456, 6),
            (u64::MAX, 1),
        ] {
            let mut s = String::from("x=");
            push_decimal(&mut s, n, width);
            assert_eq!(s, format!("x={n:0width$}"));
        }
    }

    #[test]
    fn addresses_are_written_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("address");
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }
}

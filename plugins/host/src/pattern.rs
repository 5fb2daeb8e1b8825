//! Input patterns: `device/point`, where `*` matches any run of characters
//! and `?` one character, in either part (`boiler-*/temperature`, `*/*`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    device: String,
    point: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input pattern {0:?} must be device/point, like \"boiler-*/temperature\" or \"*/*\"")]
pub struct PatternError(String);

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        match text.split_once('/') {
            Some((device, point))
                if !device.is_empty() && !point.is_empty() && !point.contains('/') =>
            {
                Ok(Self {
                    device: device.to_string(),
                    point: point.to_string(),
                })
            }
            _ => Err(PatternError(text.to_string())),
        }
    }

    pub fn matches(&self, device: &str, point: &str) -> bool {
        glob(self.device.as_bytes(), device.as_bytes())
            && glob(self.point.as_bytes(), point.as_bytes())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.device, self.point)
    }
}

/// Iterative glob with backtracking to the last `*`: linear in practice, no recursion.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_devices_and_points() {
        let check = |pattern: &str, device: &str, point: &str, expected: bool| {
            assert_eq!(
                Pattern::parse(pattern).unwrap().matches(device, point),
                expected,
                "{pattern} {device}/{point}"
            );
        };
        check("boiler-*/temperature", "boiler-1", "temperature", true);
        check("boiler-*/temperature", "boiler-", "temperature", true);
        check("boiler-*/temperature", "chiller-1", "temperature", false);
        check("boiler-*/temperature", "boiler-1", "temperature2", false);
        check("*/*", "a", "b", true);
        check("b?iler/t*e", "boiler", "temperature", true);
        check("*-1/*", "boiler-1", "x", true);
        check("*-1/*", "boiler-12", "x", false);
        for bad in ["boiler", "/x", "x/", "a/b/c", ""] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}

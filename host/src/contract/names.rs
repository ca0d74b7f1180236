//! What a processor's or workflow's name may be: the one rule every surface checks (a
//! plugin's file, a workflow definition, a request, a tenant's allow-list).

/// Whether `name` is a valid processor name: lowercase letters, digits and `-`, starting
/// with a letter, at most 64 characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

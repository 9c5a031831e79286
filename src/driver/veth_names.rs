//! Which host veth name each live endpoint holds, across every network. Names derive from the
//! EndpointID's first 12 characters, so two endpoints whose ids share them would clash: the
//! later one takes the next of its few other choices ([`names::host_veth_choices`]). A name
//! stays held until its veth is deleted, also while that runs in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::DriverError;
use crate::names;

/// Host veth name -> EndpointID. Cheap to clone: the background deletions hold one.
#[derive(Debug, Clone, Default)]
pub(crate) struct VethNames(Arc<Mutex<HashMap<String, String>>>);

impl VethNames {
    /// A plain map replaced entry by entry, so a panic elsewhere cannot leave it torn.
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recorded at start: the name an endpoint's record holds.
    pub(crate) fn known(&self, host_veth: &str, endpoint_id: &str) {
        self.map()
            .insert(host_veth.to_string(), endpoint_id.to_string());
    }

    /// The first of `endpoint_id`'s names no other endpoint holds, now held by it.
    pub(crate) fn claim(&self, endpoint_id: &str) -> Result<String, DriverError> {
        let mut map = self.map();
        for name in names::host_veth_choices(endpoint_id) {
            match map.get(&name) {
                Some(holder) if holder != endpoint_id => continue,
                _ => {
                    map.insert(name.clone(), endpoint_id.to_string());
                    return Ok(name);
                }
            }
        }
        Err(DriverError::Invalid(format!(
            "every host veth name of endpoint {} is held by another endpoint; \
             remove the containers whose endpoint ids begin with {}",
            super::short(endpoint_id),
            super::short(endpoint_id)
        )))
    }

    /// The name is free again (its veth is gone, or was never made). Only its holder frees it.
    pub(crate) fn release(&self, host_veth: &str, endpoint_id: &str) {
        let mut map = self.map();
        if map.get(host_veth).is_some_and(|h| h == endpoint_id) {
            map.remove(host_veth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_endpoint_with_the_same_12_characters_gets_another_name_until_the_first_goes() {
        let names = VethNames::default();
        let a = "0123456789abAAAA";
        let b = "0123456789abBBBB";
        let na = names.claim(a).unwrap();
        assert_eq!(na, "vcb0123456789ab");
        // A re-sent create gets the same name back.
        assert_eq!(names.claim(a).unwrap(), na);
        let nb = names.claim(b).unwrap();
        assert_ne!(nb, na);
        // Only the holder frees a name.
        names.release(&na, b);
        assert_ne!(names.claim("0123456789abCCCC").unwrap(), na);
        names.release(&na, a);
        assert_eq!(names.claim("0123456789abDDDD").unwrap(), na);
    }

    #[test]
    fn when_every_choice_is_held_the_create_is_refused_naming_the_prefix() {
        let names = VethNames::default();
        let id = "0123456789abEEEE";
        for n in names::host_veth_choices(id) {
            names.known(&n, "someone-else");
        }
        let err = names.claim(id).unwrap_err().to_string();
        assert!(err.contains("0123456789ab"), "{err}");
    }
}

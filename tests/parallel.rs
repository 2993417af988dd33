//! 16 requestMachines at once, each a separate process through the real script, against
//! one pool: no host is ever leased twice, every request id HostFactory got is tracked,
//! and the pool's free count matches what was handed out.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use serde_json::json;

/// Runs `n` concurrent requests for `count` hosts; returns (request ids, error codes).
fn burst(tree: &Arc<HfTree>, n: usize, count: u32) -> (Vec<String>, Vec<(String, String)>) {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let tree = tree.clone();
            std::thread::spawn(move || {
                tree.run(
                    "requestMachines",
                    &json!({"template": {"templateId": PLAIN_TEMPLATE, "machineCount": count}}),
                )
            })
        })
        .collect();
    let (mut ids, mut errors) = (Vec::new(), Vec::new());
    for h in handles {
        let o = h.join().expect("thread");
        if o.code == 0 {
            assert_valid("requestMachines", &o.json);
            ids.push(o.json["requestId"].as_str().expect("id").to_string());
        } else {
            assert_valid("error", &o.json);
            errors.push((o.json["error"]["code"].as_str().expect("code").to_string(), o.json.to_string()));
        }
    }
    (ids, errors)
}

/// Host name -> request ids holding it, over every request's final state.
fn holders(tree: &HfTree, ids: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ids {
        let req = tree.until_final(id);
        assert_ne!(req["status"], "running");
        assert!(
            !req["message"].as_str().unwrap_or_default().contains("unknown request id"),
            "request {id} was not tracked: {req}"
        );
        for name in machine_names(&req, "succeed") {
            map.entry(name).or_default().push(id.clone());
        }
    }
    map
}

#[test]
fn sixteen_parallel_requests_with_enough_hosts_all_succeed() {
    let tree = Arc::new(HfTree::new(&plain_inventory(40)));
    let (ids, errors) = burst(&tree, 16, 2);
    assert!(errors.is_empty(), "no request should fail with 40 hosts for 32: {errors:?}");
    let map = holders(&tree, &ids);
    let doubles: Vec<_> = map.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(doubles.is_empty(), "hosts leased twice: {doubles:?}");
    assert_eq!(map.len(), 32, "16 requests x 2 hosts");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 8);
}

#[test]
fn sixteen_parallel_requests_for_more_than_the_pool_never_double_lease() {
    let tree = Arc::new(HfTree::new(&plain_inventory(24)));
    let (ids, errors) = burst(&tree, 16, 2);
    for (code, doc) in &errors {
        assert!(
            ["INVALID_MACHINE_COUNT", "INSUFFICIENT_CAPACITY"].contains(&code.as_str()),
            "unexpected failure {doc}"
        );
    }
    let map = holders(&tree, &ids);
    let doubles: Vec<_> = map.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(doubles.is_empty(), "hosts leased twice: {doubles:?}");
    assert!(map.len() <= 24);
    assert!(ids.len() >= 12, "at least 12 requests fit in 24 hosts, {} got ids", ids.len());
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"].as_u64(), Some(24 - map.len() as u64));
}

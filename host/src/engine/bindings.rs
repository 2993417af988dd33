//! Host bindings generated from the WIT packages in `wit/` (capabilities first, since the
//! provider package imports them).

wasmtime::component::bindgen!({
    world: "hostfactory:provider/provider-guest@0.2.0",
    path: ["../wit/capabilities", "../wit/hostfactory"],
    additional_derives: [PartialEq],
});

/// Bindings of the template-selector world (`wit/policy`): policy guests import nothing but WASI.
pub mod policy {
    wasmtime::component::bindgen!({
        world: "hostfactory:policy/template-selector@0.1.0",
        path: "../wit/policy",
    });
}

/// Bindings of the provider-selector world (`wit/policy/placement.wit`): the placement hook,
/// also importing nothing but WASI.
pub mod placement {
    wasmtime::component::bindgen!({
        world: "hostfactory:policy/provider-selector@0.1.0",
        path: "../wit/policy",
    });
}

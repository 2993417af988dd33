//! Host bindings generated from the WIT packages in `wit/` (capabilities first, since the
//! provider package imports them).

wasmtime::component::bindgen!({
    world: "hostfactory:provider/provider-guest@0.2.0",
    path: ["../wit/capabilities", "../wit/hostfactory"],
    additional_derives: [PartialEq],
});

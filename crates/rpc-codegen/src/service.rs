//! `#[service]`: from a trait to a client stub, a server dispatcher and a method table.

use crate::message::{doc_string, wire_name};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use syn::{Attribute, FnArg, Ident, ItemTrait, LitStr, Pat, ReturnType, TraitItem, TraitItemFn, Type};

/// One RPC method, validated.
struct Method {
    ident: Ident,
    /// Attributes kept on the trait method and copied to the client method (docs, lints).
    attrs: Vec<Attribute>,
    doc: String,
    args: Vec<(Ident, Type)>,
    output: Type,
    oneway: bool,
    idempotent: bool,
    /// The `Streaming<T>` argument, if the method takes a stream: its name and `T`.
    stream_in: Option<(Ident, Type)>,
    /// `T` of an `RpcStream<T>` return type.
    stream_out: Option<Type>,
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let name = parse_name(attr)?;
    let item: ItemTrait = syn::parse2(item)?;
    check_trait(&item)?;
    let mut errors: Option<syn::Error> = None;
    let mut methods = Vec::new();
    for trait_item in &item.items {
        let parsed = match trait_item {
            TraitItem::Fn(f) => parse_method(f),
            other => Err(syn::Error::new_spanned(
                other,
                "a #[service] trait may only contain `async fn` methods; move other items elsewhere",
            )),
        };
        match parsed {
            Ok(m) => methods.push(m),
            Err(e) => match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            },
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    let name = name.unwrap_or_else(|| wire_name(&item.ident));
    Ok(generate(&item, &name, &methods))
}

fn parse_name(attr: TokenStream) -> syn::Result<Option<String>> {
    if attr.is_empty() {
        return Ok(None);
    }
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().is_empty() || lit.value().len() > 255 {
                return Err(syn::Error::new_spanned(lit, "a service name has 1 to 255 bytes"));
            }
            name = Some(lit.value());
            Ok(())
        } else {
            Err(meta.error("unknown #[service] argument; the only one is `name = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(name)
}

fn check_trait(item: &ItemTrait) -> syn::Result<()> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "a #[service] trait cannot be generic: every call's types must be known to both ends",
        ));
    }
    if let Some(unsafety) = &item.unsafety {
        return Err(syn::Error::new_spanned(unsafety, "a #[service] trait cannot be unsafe"));
    }
    if let Some(auto) = &item.auto_token {
        return Err(syn::Error::new_spanned(auto, "a #[service] trait cannot be an auto trait"));
    }
    if !item.supertraits.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.supertraits,
            "a #[service] trait cannot have supertraits; the macro adds `Send + Sync + 'static` itself",
        ));
    }
    Ok(())
}

fn parse_method(f: &TraitItemFn) -> syn::Result<Method> {
    let sig = &f.sig;
    if let Some(body) = &f.default {
        return Err(syn::Error::new_spanned(
            body,
            "a #[service] method cannot have a default body; implement it in the server's impl",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "a #[service] method must be `async fn` (calls cross the network)",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new_spanned(c, "a #[service] method cannot be const"));
    }
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new_spanned(u, "a #[service] method cannot be unsafe"));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(abi, "a #[service] method cannot declare an ABI"));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(v, "a #[service] method cannot be variadic"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a #[service] method cannot be generic: its argument and return types must be concrete",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                "a #[service] method takes `&self`: handlers run concurrently and share the service",
            ))
        }
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "a #[service] method takes `&self` as its first argument",
            ))
        }
    }
    let mut args = Vec::new();
    let mut stream_in = None;
    for input in inputs {
        let FnArg::Typed(pt) = input else { continue };
        let ident = match &*pt.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "a #[service] argument must be a plain name such as `id: u64`, not a pattern",
                ))
            }
        };
        check_owned(&pt.ty, "argument")?;
        if let Some(item) = stream_item(&pt.ty, "Streaming")? {
            if stream_in.is_some() {
                return Err(syn::Error::new_spanned(
                    &pt.ty,
                    "a #[service] method takes at most one `Streaming<T>` argument; send one stream of an enum instead",
                ));
            }
            stream_in = Some((ident, item));
        } else {
            args.push((ident, (*pt.ty).clone()));
        }
    }
    if let (Some((ident, _)), Some((other, _))) = (&stream_in, args.first()) {
        return Err(syn::Error::new(
            other.span().join(ident.span()).unwrap_or_else(|| other.span()),
            "a #[service] method with a `Streaming<T>` argument takes no other arguments (as in a .proto \
             `rpc M(stream T)`); put them in the stream's items or in the call's metadata",
        ));
    }
    let mut stream_out = None;
    let output = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => {
            check_owned(ty, "return type")?;
            stream_out = stream_item(ty, "RpcStream")?;
            (**ty).clone()
        }
    };
    let mut oneway = false;
    let mut idempotent = false;
    let mut attrs = Vec::new();
    for attr in &f.attrs {
        let flag = if attr.path().is_ident("oneway") {
            &mut oneway
        } else if attr.path().is_ident("idempotent") {
            &mut idempotent
        } else {
            attrs.push(attr.clone());
            continue;
        };
        if !matches!(attr.meta, syn::Meta::Path(_)) {
            return Err(syn::Error::new_spanned(&attr.meta, "#[oneway] and #[idempotent] take no arguments"));
        }
        *flag = true;
    }
    if oneway && !matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new_spanned(
            &sig.output,
            "a #[oneway] method gets no reply, so it cannot return a value; remove the return type",
        ));
    }
    if let (true, Some((ident, _))) = (oneway, &stream_in) {
        return Err(syn::Error::new_spanned(ident, "a #[oneway] method cannot take a stream; drop #[oneway]"));
    }
    Ok(Method {
        ident: sig.ident.clone(),
        doc: doc_string(&f.attrs),
        attrs,
        args,
        output,
        oneway,
        idempotent,
        stream_in,
        stream_out,
    })
}

/// `T` if `ty` is `wrapper<T>` (by its last path segment, so `rpc_core::Streaming<T>` and an
/// imported `Streaming<T>` both count).
fn stream_item(ty: &Type, wrapper: &str) -> syn::Result<Option<Type>> {
    let Type::Path(path) = ty else { return Ok(None) };
    let Some(last) = path.path.segments.last() else { return Ok(None) };
    if last.ident != wrapper {
        return Ok(None);
    }
    match &last.arguments {
        syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
            syn::GenericArgument::Type(item) => Ok(Some(item.clone())),
            other => Err(syn::Error::new_spanned(other, format!("`{wrapper}` takes the item type: `{wrapper}<T>`"))),
        },
        _ => Err(syn::Error::new_spanned(ty, format!("`{wrapper}` takes the item type: `{wrapper}<T>`"))),
    }
}

/// Rejects types that cannot cross the network by value.
fn check_owned(ty: &Type, what: &str) -> syn::Result<()> {
    match ty {
        Type::Reference(r) => Err(syn::Error::new_spanned(
            r,
            format!("a #[service] {what} must be an owned type (it crosses the network); use `String` for `&str`, `Vec<T>` for `&[T]`"),
        )),
        Type::ImplTrait(t) => {
            Err(syn::Error::new_spanned(t, format!("a #[service] {what} cannot be `impl Trait`; name a concrete type")))
        }
        Type::TraitObject(t) => {
            Err(syn::Error::new_spanned(t, format!("a #[service] {what} cannot be a trait object; name a concrete type")))
        }
        Type::Infer(t) => Err(syn::Error::new_spanned(t, format!("a #[service] {what} must be spelled out"))),
        Type::Paren(p) => check_owned(&p.elem, what),
        Type::Group(g) => check_owned(&g.elem, what),
        _ => Ok(()),
    }
}

/// A type as source text without the token spacing `quote` adds (`Result<T, E>`).
fn type_text(ty: &Type) -> String {
    let raw = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(raw.len());
    for (i, c) in raw.char_indices() {
        if c == ' ' {
            let prev = raw[..i].chars().next_back();
            let next = raw[i + 1..].chars().next();
            if matches!(prev, Some('<' | '&' | '(' | '[' | ':'))
                || matches!(next, Some('<' | '>' | ',' | ')' | ']' | ':'))
            {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn upper_camel(ident: &Ident) -> String {
    // `r#yield` names the method `yield`: the prefix is Rust syntax, not part of the name.
    crate::message::wire_name(ident)
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
        })
        .collect()
}

fn generate(item: &ItemTrait, name: &str, methods: &[Method]) -> TokenStream {
    let vis = &item.vis;
    let trait_ident = &item.ident;
    let trait_attrs = &item.attrs;
    let client = format_ident!("{}Client", trait_ident);
    let server = format_ident!("{}Server", trait_ident);
    let info = format_ident!("__{}_RPC_SERVICE_INFO", wire_name(trait_ident).to_uppercase());
    let rpc = quote!(::rpc_core);
    let private = quote!(::rpc_core::__private);
    let service_doc = doc_string(&item.attrs);
    let args_struct = |m: &Method| format_ident!("__{}{}Args", trait_ident, upper_camel(&m.ident));

    let trait_methods = methods.iter().map(|m| {
        let Method { ident, attrs, args, output, stream_in, .. } = m;
        let stream_param = stream_in.as_ref().map(|(a, item)| quote!(#a: #rpc::Streaming<#item>));
        let params = args.iter().map(|(a, t)| quote!(#a: #t)).chain(stream_param);
        quote! {
            #(#attrs)*
            fn #ident(&self, #(#params),*) -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
        }
    });

    let arg_structs = methods.iter().map(|m| {
        let s = args_struct(m);
        let fields = m.args.iter().map(|(a, t)| quote!(#a: #t));
        // Apache Thrift's `method_args`: the arguments are fields 1..n.
        quote! {
            #[doc(hidden)]
            #[allow(non_camel_case_types)]
            #[::rpc_core::message(arguments)]
            struct #s { #(#fields),* }
        }
    });

    let method_infos = methods.iter().map(|m| {
        let method_name = wire_name(&m.ident);
        let doc = &m.doc;
        let arg_infos = m.args.iter().map(|(a, t)| {
            let (a, t) = (wire_name(a), type_text(t));
            quote!((#a, #t))
        });
        let returns = type_text(&m.output);
        let (oneway, idempotent) = (m.oneway, m.idempotent);
        let (client_stream, server_stream) = (m.stream_in.is_some(), m.stream_out.is_some());
        quote! {
            #private::MethodInfo {
                name: #method_name,
                doc: #doc,
                args: &[#(#arg_infos),*],
                returns: #returns,
                oneway: #oneway,
                idempotent: #idempotent,
                client_stream: #client_stream,
                server_stream: #server_stream,
            }
        }
    });

    let idl_methods = methods.iter().map(|m| {
        let method_name = wire_name(&m.ident);
        let doc = &m.doc;
        let oneway = m.oneway;
        let output = m.stream_out.as_ref().unwrap_or(&m.output);
        let reply_stream = m.stream_out.is_some();
        let args = m.args.iter().map(|(a, t)| {
            let a = wire_name(a);
            quote!((::std::string::String::from(#a), <#t as #private::schema::Schema>::idl(idl)))
        });
        let request_stream = match &m.stream_in {
            Some((_, item)) => quote!(::core::option::Option::Some(<#item as #private::schema::Schema>::idl(idl))),
            None => quote!(::core::option::Option::None),
        };
        quote! {
            #private::schema::MethodDef {
                name: ::std::string::String::from(#method_name),
                doc: ::std::string::String::from(#doc),
                args: ::std::vec![#(#args),*],
                returns: <#output as #private::schema::Schema>::idl(idl),
                oneway: #oneway,
                request_stream: #request_stream,
                reply_stream: #reply_stream,
            }
        }
    });

    let client_methods = methods.iter().map(|m| {
        let Method { ident, attrs, args, output, oneway, idempotent, stream_in, stream_out, .. } = m;
        let s = args_struct(m);
        let method_name = wire_name(ident);
        let params = args.iter().map(|(a, t)| quote!(#a: #t));
        let names = args.iter().map(|(a, _)| a);
        let inner = quote!(::core::clone::Clone::clone(&self.inner));
        let request = quote!(#private::request(#name, #method_name, #s { #(#names),* }, #idempotent, #oneway));
        let open = quote!(S: #rpc::client::OpenStream + ::core::marker::Send + 'static);
        match (stream_in, stream_out) {
            (None, None) => quote! {
                #(#attrs)*
                pub fn #ident(&self, #(#params),*) -> #rpc::Call<S, #output> {
                    #rpc::Call::new(#inner, #request)
                }
            },
            (None, Some(item)) => quote! {
                #(#attrs)*
                pub fn #ident(&self, #(#params),*) -> #rpc::client::StreamCall<S, #item> where #open {
                    #rpc::client::StreamCall::new(#inner, #request, ::core::option::Option::None)
                }
            },
            (Some((items, item_in)), out) => {
                let param = quote!(#items: impl #private::Stream<Item = #item_in> + ::core::marker::Send + 'static);
                let items = quote!(#rpc::Items::new(#items));
                match out {
                    Some(item) => quote! {
                        #(#attrs)*
                        pub fn #ident(&self, #param) -> #rpc::client::StreamCall<S, #item> where #open {
                            #rpc::client::StreamCall::new(#inner, #request, ::core::option::Option::Some(#items))
                        }
                    },
                    None => quote! {
                        #(#attrs)*
                        pub fn #ident(&self, #param) -> #rpc::client::ClientStreamCall<S, #output> where #open {
                            #rpc::client::ClientStreamCall::new(#inner, #request, #items)
                        }
                    },
                }
            }
        }
    });

    let dispatch_arms = methods.iter().map(|m| {
        let Method { ident, args, oneway, stream_in, stream_out, .. } = m;
        let s = args_struct(m);
        let method_name = syn::LitByteStr::new(wire_name(ident).as_bytes(), ident.span());
        let names: Vec<_> = args.iter().map(|(a, _)| a).collect();
        let finish = if *oneway {
            quote!(::core::result::Result::Ok(#rpc::ServerResponse::default()))
        } else if stream_out.is_some() {
            quote!(__rpc_request.reply_stream(__rpc_ret))
        } else {
            quote!(__rpc_request.reply(&__rpc_ret))
        };
        // A streaming method accepts its stream once its arguments decoded, before the handler
        // runs: the handler may wait for the client's items, which wait for the acceptance.
        let (accept, stream_arg) = match (stream_in, stream_out) {
            (Some((items, item)), _) => {
                (quote!(let #items = #rpc::Streaming::<#item>::new(__rpc_request.accept_stream()?);), Some(items))
            }
            (None, Some(_)) => (quote!(__rpc_request.accept_stream()?;), None),
            (None, None) => (quote!(), None),
        };
        let call_args = names.iter().copied().chain(stream_arg);
        quote! {
            #method_name => {
                let __rpc_inner = ::std::sync::Arc::clone(&self.inner);
                ::std::boxed::Box::pin(async move {
                    let #s { #(#names),* } = __rpc_request.decode::<#s>()?;
                    #accept
                    #[allow(clippy::let_unit_value)]
                    let __rpc_ret = __rpc_inner.#ident(#(#call_args),*).await;
                    #finish
                })
            }
        }
    });

    let client_doc = format!(
        "Client of the [`{trait_ident}`] service, generic over the tower service `S` that carries its requests."
    );
    let server_doc = format!("Server side of the [`{trait_ident}`] service: dispatches calls to a `T: {trait_ident}`.");

    quote! {
        #(#trait_attrs)*
        #vis trait #trait_ident: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #(#arg_structs)*

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        const #info: #private::ServiceInfo = {
            fn describe(idl: &mut #private::schema::Idl) {
                let methods = ::std::vec![#(#idl_methods),*];
                idl.add_service(#name, #service_doc, methods);
            }
            #private::ServiceInfo {
                name: #name,
                doc: #service_doc,
                methods: &[#(#method_infos),*],
                describe,
            }
        };

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client<S = #rpc::Channel> {
            inner: S,
        }

        impl<S> #client<S> {
            /// The service's name and method table.
            pub const INFO: &'static #private::ServiceInfo = &#info;

            /// A client that sends its calls through `inner` (a `Channel` or layers around one).
            pub fn new(inner: S) -> Self {
                Self { inner }
            }

            /// The service that carries the calls.
            pub fn inner(&self) -> &S {
                &self.inner
            }

            /// Returns the service that carries the calls.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }

        impl<S> #client<S>
        where
            S: #private::tower::Service<#rpc::Request, Response = #rpc::Response, Error = #rpc::Status> + ::core::clone::Clone,
        {
            #(#client_methods)*
        }

        #[doc = #server_doc]
        #vis struct #server<T> {
            inner: ::std::sync::Arc<T>,
        }

        impl<T> #server<T> {
            /// The service's name and method table.
            pub const INFO: &'static #private::ServiceInfo = &#info;

            /// Serves `inner`.
            pub fn new(inner: T) -> Self {
                Self { inner: ::std::sync::Arc::new(inner) }
            }

            /// Serves an implementation shared with other code.
            pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {
                Self { inner }
            }
        }

        impl<T> ::core::clone::Clone for #server<T> {
            fn clone(&self) -> Self {
                Self { inner: ::std::sync::Arc::clone(&self.inner) }
            }
        }

        impl<T: #trait_ident> #rpc::server::Dispatch for #server<T> {
            fn info(&self) -> &'static #private::ServiceInfo {
                &#info
            }

            fn dispatch(&self, __rpc_request: #rpc::ServerRequest) -> #private::DispatchFuture {
                match __rpc_request.method().as_bytes() {
                    #(#dispatch_arms)*
                    _ => #private::unknown_method(&#info, __rpc_request.method().as_str()),
                }
            }
        }

        impl<T: #trait_ident> #private::tower::Service<#rpc::ServerRequest> for #server<T> {
            type Response = #rpc::ServerResponse;
            type Error = #rpc::Status;
            type Future = #private::DispatchFuture;

            fn poll_ready(
                &mut self,
                _: &mut ::core::task::Context<'_>,
            ) -> ::core::task::Poll<::core::result::Result<(), #rpc::Status>> {
                ::core::task::Poll::Ready(::core::result::Result::Ok(()))
            }

            fn call(&mut self, request: #rpc::ServerRequest) -> Self::Future {
                #rpc::server::Dispatch::dispatch(self, request)
            }
        }
    }
}

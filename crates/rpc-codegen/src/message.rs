//! `#[message]`: derives the encodings a type needs to travel in a call.
//!
//! `serde` (JSON, MessagePack) plus the `Schema` impls of the Protobuf and Thrift codecs: field
//! numbers are the declaration order from 1, `#[tag = N]` overrides one, and a number used twice
//! is an error at the second use.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

/// Largest field number both formats accept (Thrift ids are `i16`).
const MAX_TAG: u32 = i16::MAX as u32;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    // `#[message(arguments)]` is what `#[service]` puts on a method's arguments: errors then
    // name a missing field as the argument it is, not as a field of a generated struct.
    let arguments = match attr.to_string().as_str() {
        "" => false,
        "arguments" => true,
        _ => return Err(syn::Error::new_spanned(attr, "#[message] takes no arguments")),
    };
    let mut item: syn::DeriveInput = syn::parse2(item)?;
    refuse_diverging_serde(&item.attrs)?;
    match &item.data {
        syn::Data::Struct(s) => s.fields.iter().try_for_each(|f| refuse_diverging_serde(&f.attrs))?,
        syn::Data::Enum(e) => e.variants.iter().try_for_each(|v| {
            refuse_diverging_serde(&v.attrs)?;
            v.fields.iter().try_for_each(|f| refuse_diverging_serde(&f.attrs))
        })?,
        syn::Data::Union(_) => {}
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "a #[message] type cannot be generic: its schema must be known to both ends",
        ));
    }
    let schema = match &mut item.data {
        syn::Data::Struct(s) => expand_struct(&item.ident, &item.attrs, &mut s.fields, arguments)?,
        syn::Data::Enum(e) => expand_enum(&item.ident, &item.attrs, e)?,
        syn::Data::Union(u) => {
            return Err(syn::Error::new_spanned(u.union_token, "#[message] supports structs and enums, not unions"))
        }
    };
    let fields: Vec<&mut syn::Field> = match &mut item.data {
        syn::Data::Struct(s) => s.fields.iter_mut().collect(),
        syn::Data::Enum(e) => e.variants.iter_mut().flat_map(|v| v.fields.iter_mut()).collect(),
        syn::Data::Union(_) => Vec::new(),
    };
    for field in fields {
        // A field with its own serde adapter keeps it.
        if serde_says(&field.attrs, &["with", "serialize_with", "deserialize_with"]) {
            continue;
        }
        if is_float(&field.ty) {
            field.attrs.push(syn::parse_quote!(#[serde(with = "::rpc_core::__private::float_field")]));
        } else if option_inner(&field.ty).is_some_and(is_float) {
            field.attrs.push(syn::parse_quote!(#[serde(with = "::rpc_core::__private::float_field::option")]));
            if field.ident.is_some() && !serde_says(&field.attrs, &["default"]) {
                field.attrs.push(syn::parse_quote!(#[serde(default)]));
            }
        } else if vec_inner(&field.ty).is_some_and(is_float) {
            field.attrs.push(syn::parse_quote!(#[serde(with = "::rpc_core::__private::float_field::list")]));
        } else if is_byte_vec(&field.ty) {
            field.attrs.push(syn::parse_quote!(#[serde(with = "::rpc_core::__private::bytes_field")]));
        } else if option_inner(&field.ty).is_some_and(is_byte_vec) {
            field.attrs.push(syn::parse_quote!(#[serde(with = "::rpc_core::__private::bytes_field::option")]));
            // A named field may be left out (what `Option` does without an adapter).
            if field.ident.is_some() && !serde_says(&field.attrs, &["default"]) {
                field.attrs.push(syn::parse_quote!(#[serde(default)]));
            }
        }
    }
    Ok(quote! {
        #[derive(::rpc_core::__private::serde::Serialize, ::rpc_core::__private::serde::Deserialize)]
        #[serde(crate = "::rpc_core::__private::serde")]
        #item
        #schema
    })
}

/// Serde options that JSON and MessagePack would obey and Protobuf and Thrift would not: each
/// would make the codecs disagree about the same value.
const DIVERGING_SERDE: &[&str] = &[
    "rename",
    "rename_all",
    "rename_all_fields",
    "alias",
    "skip",
    "skip_serializing",
    "skip_deserializing",
    "skip_serializing_if",
    "flatten",
    "tag",
    "content",
    "untagged",
    "transparent",
    "from",
    "try_from",
    "into",
    "remote",
    "other",
];

/// Refuses the serde options among `attrs` that only some codecs would obey.
fn refuse_diverging_serde(attrs: &[syn::Attribute]) -> syn::Result<()> {
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            if let Some(word) = DIVERGING_SERDE.iter().find(|w| meta.path.is_ident(w)) {
                return Err(meta.error(format!(
                    "#[serde({word})] cannot be used on a #[message] type: JSON and MessagePack would obey it and \
                     Protobuf and Thrift would not, so the codecs would disagree; name the Rust item as it \
                     should travel, and use #[tag = N] to number a field"
                )));
            }
            // Other options (`default`, `with`, `bound`, ...) are skipped with their values.
            if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<syn::Expr>()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _nested;
                syn::parenthesized!(_nested in meta.input);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Whether a `#[serde(..)]` attribute among `attrs` names one of `words`.
fn serde_says(attrs: &[syn::Attribute], words: &[&str]) -> bool {
    attrs.iter().filter(|a| a.path().is_ident("serde")).any(|a| {
        let text = a.meta.to_token_stream().to_string();
        text.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| words.contains(&w))
    })
}

/// `T` of an `Option<T>`.
fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    generic_inner(ty, "Option")
}

/// `T` of a `Vec<T>`.
fn vec_inner(ty: &syn::Type) -> Option<&syn::Type> {
    generic_inner(ty, "Vec")
}

/// `T` of a `Wrapper<T>`.
fn generic_inner<'a>(ty: &'a syn::Type, wrapper: &str) -> Option<&'a syn::Type> {
    let syn::Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.first() {
        Some(syn::GenericArgument::Type(inner)) if last.ident == wrapper => Some(inner),
        _ => None,
    }
}

/// `f32` or `f64`: JSON needs them spelled out when they are not finite.
fn is_float(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.path.is_ident("f32") || p.path.is_ident("f64"))
}

/// `Vec<u8>` (alone or in an `Option`) travels as a byte string, not as a list of numbers.
fn is_byte_vec(ty: &syn::Type) -> bool {
    let syn::Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else { return false };
    if last.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    matches!(args.args.first(), Some(syn::GenericArgument::Type(syn::Type::Path(t))) if t.path.is_ident("u8"))
}

/// Removes `#[tag = N]` from `attrs` and returns N.
fn take_tag(attrs: &mut Vec<syn::Attribute>) -> syn::Result<Option<(u32, Span)>> {
    let mut tag = None;
    let mut error = None;
    attrs.retain(|attr| {
        if !attr.path().is_ident("tag") {
            return true;
        }
        let parsed = match &attr.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(n), .. }) => n.base10_parse::<u32>().ok(),
                _ => None,
            },
            _ => None,
        };
        match parsed {
            Some(n) if (1..=MAX_TAG).contains(&n) && !(19_000..20_000).contains(&n) => tag = Some((n, attr.span())),
            _ => {
                error = Some(syn::Error::new_spanned(
                    attr,
                    format!(
                        "expected `#[tag = N]` with N from 1 to {MAX_TAG}, outside protobuf's reserved 19000-19999"
                    ),
                ))
            }
        }
        false
    });
    match error {
        Some(e) => Err(e),
        None => Ok(tag),
    }
}

/// Numbers the fields: declaration order from 1, `#[tag = N]` overrides; a repeat is an error.
fn assign_tags<'a>(attrs: impl Iterator<Item = (&'a mut Vec<syn::Attribute>, Span)>) -> syn::Result<Vec<u32>> {
    let mut tags: Vec<u32> = Vec::new();
    for (i, (attrs, span)) in attrs.enumerate() {
        let (tag, span) = take_tag(attrs)?.unwrap_or((i as u32 + 1, span));
        if tags.contains(&tag) {
            return Err(syn::Error::new(
                span,
                format!("field number {tag} is used twice; set a distinct one with `#[tag = N]`"),
            ));
        }
        tags.push(tag);
    }
    Ok(tags)
}

/// An identifier as peers and IDL see it: without the `r#` of a raw identifier.
pub(crate) fn wire_name(ident: &syn::Ident) -> String {
    let name = ident.to_string();
    name.strip_prefix("r#").unwrap_or(&name).to_owned()
}

fn expand_struct(
    ident: &syn::Ident,
    attrs: &[syn::Attribute],
    fields: &mut syn::Fields,
    arguments: bool,
) -> syn::Result<TokenStream> {
    if let syn::Fields::Unnamed(u) = fields {
        return Err(syn::Error::new_spanned(
            u,
            "a #[message] struct needs named fields (they name the schema's fields)",
        ));
    }
    let tags = assign_tags(fields.iter_mut().map(|f| {
        let span = f.ident.span();
        (&mut f.attrs, span)
    }))?;
    let s = quote!(::rpc_core::__private::schema);
    let type_name = ident.to_string();
    let names: Vec<&syn::Ident> = fields.iter().filter_map(|f| f.ident.as_ref()).collect();
    let slots: Vec<syn::Ident> = names.iter().map(|n| format_ident!("__f_{}", wire_name(n))).collect();
    let name_strs: Vec<String> = names.iter().map(|n| wire_name(n)).collect();
    let tys: Vec<&syn::Type> = fields.iter().map(|f| &f.ty).collect();
    let thrift_ids: Vec<i16> = tags.iter().map(|&t| t as i16).collect();

    let encode =
        tys.iter().zip(&names).zip(&tags).map(
            |((ty, name), tag)| quote_spanned!(ty.span()=> <#ty as #s::Schema>::proto_field(&self.#name, #tag, buf);),
        );
    let len =
        tys.iter().zip(&names).zip(&tags).map(
            |((ty, name), tag)| quote_spanned!(ty.span()=> + <#ty as #s::Schema>::proto_field_len(&self.#name, #tag)),
        );
    let proto_arms = tys.iter().zip(&slots).zip(&tags).map(|((ty, slot), tag)| {
        quote_spanned!(ty.span()=> (#tag, wire) => <#ty as #s::Schema>::proto_merge(&mut #slot, wire, buf, depth)?,)
    });
    let thrift_writes = tys.iter().zip(&names).zip(&thrift_ids).map(|((ty, name), id)| {
        quote_spanned! {ty.span()=>
            if <#ty as #s::Schema>::thrift_present(&self.#name) {
                o.write_field_begin(&#s::thrift_field(<#ty as #s::Schema>::THRIFT_TYPE, #id))?;
                <#ty as #s::Schema>::thrift_write(&self.#name, o)?;
                o.write_field_end()?;
            }
        }
    });
    let thrift_arms = tys.iter().zip(&slots).zip(&thrift_ids).map(|((ty, slot), id)| {
        quote_spanned! {ty.span()=>
            (t, ::core::option::Option::Some(#id)) if t == <#ty as #s::Schema>::THRIFT_TYPE =>
                <#ty as #s::Schema>::thrift_merge(&mut #slot, i, depth)?,
        }
    });
    let thrift_loop = thrift_read_loop(thrift_arms);
    let idl_fields = tys.iter().zip(&name_strs).zip(&tags).map(
        |((ty, name), tag)| quote_spanned!(ty.span()=> #s::FieldDef::new(#name, #tag, <#ty as #s::Schema>::idl(idl))),
    );
    let paths: Vec<String> = name_strs
        .iter()
        .map(|name| match arguments {
            true => format!("argument `{name}`"),
            false => format!("{type_name}.{name}"),
        })
        .collect();
    let finish = |f: TokenStream| {
        tys.iter()
            .zip(&names)
            .zip(&slots)
            .zip(&paths)
            .map(move |(((ty, name), slot), path)| quote_spanned!(ty.span()=> #name: #f::<#ty>(#slot, #path)?,))
    };
    let proto_finish = finish(quote!(#s::proto_finish));
    let thrift_finish = finish(quote!(#s::thrift_finish));
    let doc = doc_string(attrs);
    let body = quote! {
        impl #s::Struct for #ident {
            fn proto_body(&self, buf: &mut #s::BytesMut) {
                #(#encode)*
            }
            fn proto_body_len(&self) -> usize {
                0 #(#len)*
            }
            fn proto_merge_body(
                start: ::core::option::Option<Self>,
                buf: &mut &[u8],
                depth: usize,
            ) -> #s::ProtoResult<Self> {
                #(let mut #slots = ::core::option::Option::None;)*
                if let ::core::option::Option::Some(#ident { #(#names),* }) = start {
                    #(#slots = ::core::option::Option::Some(#names);)*
                }
                while !buf.is_empty() {
                    match #s::proto_read_key(buf)? {
                        #(#proto_arms)*
                        (tag, wire) => #s::proto_skip(wire, tag, buf)?,
                    }
                }
                ::core::result::Result::Ok(#ident { #(#proto_finish)* })
            }
            fn thrift_write_body<P: #s::TOutputProtocol + ?Sized>(&self, o: &mut P) -> #s::ThriftResult<()> {
                o.write_struct_begin(&#s::thrift_struct())?;
                #(#thrift_writes)*
                o.write_field_stop()?;
                o.write_struct_end()
            }
            fn thrift_read_body<P: #s::TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> #s::ThriftResult<Self> {
                #(let mut #slots = ::core::option::Option::None;)*
                #thrift_loop
                ::core::result::Result::Ok(#ident { #(#thrift_finish)* })
            }
        }
    };
    let idl = quote! {
        if idl.begin(#type_name) {
            let fields = ::std::vec![#(#idl_fields),*];
            idl.define_struct(#type_name, #doc, fields);
        }
        #s::TypeRef::named(#type_name)
    };
    Ok(message_impls(ident, body, idl, true))
}

fn expand_enum(ident: &syn::Ident, attrs: &[syn::Attribute], e: &mut syn::DataEnum) -> syn::Result<TokenStream> {
    if e.variants.is_empty() {
        return Err(syn::Error::new_spanned(ident, "a #[message] enum needs at least one variant"));
    }
    if e.variants.iter().all(|v| matches!(v.fields, syn::Fields::Unit)) {
        return c_like_enum(ident, attrs, e);
    }
    for v in &e.variants {
        if !matches!(&v.fields, syn::Fields::Unnamed(u) if u.unnamed.len() == 1) {
            return Err(syn::Error::new_spanned(
                v,
                "a #[message] enum with data needs one unnamed field per variant, e.g. `Circle(Circle)` (it becomes a protobuf oneof / Thrift union)",
            ));
        }
    }
    let tags = assign_tags(e.variants.iter_mut().map(|v| {
        let span = v.ident.span();
        (&mut v.attrs, span)
    }))?;
    let s = quote!(::rpc_core::__private::schema);
    let type_name = ident.to_string();
    let variants: Vec<&syn::Ident> = e.variants.iter().map(|v| &v.ident).collect();
    let tys: Vec<&syn::Type> = e.variants.iter().map(|v| &v.fields.iter().next().expect("checked above").ty).collect();
    let thrift_ids: Vec<i16> = tags.iter().map(|&t| t as i16).collect();
    let field_names: Vec<String> = variants.iter().map(|v| snake(&v.to_string())).collect();
    let encode = tys.iter().zip(&variants).zip(&tags).map(|((ty, v), tag)| {
        quote_spanned!(ty.span()=> #ident::#v(value) => #s::single_value_field::<#ty>(value, #tag, buf),)
    });
    let len = tys.iter().zip(&variants).zip(&tags).map(|((ty, v), tag)| {
        quote_spanned!(ty.span()=> #ident::#v(value) => #s::single_value_field_len::<#ty>(value, #tag),)
    });
    let proto_arms = tys.iter().zip(&variants).zip(&tags).map(|((ty, v), tag)| {
        quote_spanned! {ty.span()=>
            (#tag, wire) => out = ::core::option::Option::Some(#ident::#v(<#ty as #s::Single>::proto_read(wire, buf, depth)?)),
        }
    });
    let thrift_writes = tys.iter().zip(&variants).zip(&thrift_ids).map(|((ty, v), id)| {
        quote_spanned! {ty.span()=>
            #ident::#v(value) => {
                o.write_field_begin(&#s::thrift_field(<#ty as #s::Schema>::THRIFT_TYPE, #id))?;
                <#ty as #s::Schema>::thrift_write(value, o)?;
                o.write_field_end()?;
            }
        }
    });
    let thrift_arms = tys.iter().zip(&variants).zip(&thrift_ids).map(|((ty, v), id)| {
        quote_spanned! {ty.span()=>
            (t, ::core::option::Option::Some(#id)) if t == <#ty as #s::Schema>::THRIFT_TYPE =>
                out = ::core::option::Option::Some(#ident::#v(<#ty as #s::Single>::thrift_read(i, depth)?)),
        }
    });
    let thrift_loop = thrift_read_loop(thrift_arms);
    let idl_fields = tys.iter().zip(&field_names).zip(&tags).map(
        |((ty, name), tag)| quote_spanned!(ty.span()=> #s::FieldDef::new(#name, #tag, <#ty as #s::Schema>::idl(idl))),
    );
    let doc = doc_string(attrs);
    let none_set = format!("{type_name} has none of its variants set");
    let body = quote! {
        impl #s::Struct for #ident {
            fn proto_body(&self, buf: &mut #s::BytesMut) {
                match self { #(#encode)* }
            }
            fn proto_body_len(&self) -> usize {
                match self { #(#len)* }
            }
            // A oneof: the last member read wins whole.
            fn proto_merge_body(
                _: ::core::option::Option<Self>,
                buf: &mut &[u8],
                depth: usize,
            ) -> #s::ProtoResult<Self> {
                let mut out = ::core::option::Option::None;
                while !buf.is_empty() {
                    match #s::proto_read_key(buf)? {
                        #(#proto_arms)*
                        (tag, wire) => #s::proto_skip(wire, tag, buf)?,
                    }
                }
                out.ok_or_else(|| #s::proto_error(#none_set))
            }
            fn thrift_write_body<P: #s::TOutputProtocol + ?Sized>(&self, o: &mut P) -> #s::ThriftResult<()> {
                o.write_struct_begin(&#s::thrift_struct())?;
                match self { #(#thrift_writes)* }
                o.write_field_stop()?;
                o.write_struct_end()
            }
            fn thrift_read_body<P: #s::TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> #s::ThriftResult<Self> {
                let mut out = ::core::option::Option::None;
                #thrift_loop
                out.ok_or_else(|| #s::thrift_error(#none_set))
            }
        }
    };
    let idl = quote! {
        if idl.begin(#type_name) {
            let fields = ::std::vec![#(#idl_fields),*];
            idl.define_union(#type_name, #doc, fields);
        }
        #s::TypeRef::named(#type_name)
    };
    Ok(message_impls(ident, body, idl, false))
}

/// Reads a Thrift struct's fields with `arms` (each `(type, Some(id)) => ...`), skipping the
/// fields it does not know.
fn thrift_read_loop(arms: impl Iterator<Item = TokenStream>) -> TokenStream {
    let s = quote!(::rpc_core::__private::schema);
    quote! {
        i.read_struct_begin()?;
        loop {
            let field = i.read_field_begin()?;
            match (field.field_type, field.id) {
                (#s::TType::Stop, _) => break,
                #(#arms)*
                (t, _) => i.skip(t)?,
            }
            i.read_field_end()?;
        }
        i.read_struct_end()?;
    }
}

/// `Single` and `Schema` for a message type, delegating to its `Struct` impl. `exception`: a
/// struct, which Thrift can throw as it is (a union cannot).
fn message_impls(ident: &syn::Ident, struct_impl: TokenStream, idl: TokenStream, exception: bool) -> TokenStream {
    let s = quote!(::rpc_core::__private::schema);
    quote! {
        const _: () = {
            #struct_impl

            impl #s::Single for #ident {
                ::rpc_core::__private::__struct_value_methods!();
            }

            impl #s::Schema for #ident {
                ::rpc_core::__private::__single_field_methods!();
                const THRIFT_TYPE: #s::TType = #s::TType::Struct;
                const THRIFT_EXCEPTION: bool = #exception;
                fn thrift_write<P: #s::TOutputProtocol + ?Sized>(&self, o: &mut P) -> #s::ThriftResult<()> {
                    #s::Struct::thrift_write_body(self, o)
                }
                fn proto_encode_message(&self, buf: &mut #s::BytesMut) {
                    #s::Struct::proto_body(self, buf)
                }
                fn proto_decode_message(buf: &mut &[u8], depth: usize) -> #s::ProtoResult<Self> {
                    <Self as #s::Struct>::proto_read_body(buf, depth)
                }
                fn thrift_write_message<P: #s::TOutputProtocol + ?Sized>(&self, o: &mut P) -> #s::ThriftResult<()> {
                    #s::Struct::thrift_write_body(self, o)
                }
                fn thrift_read_message<P: #s::TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> #s::ThriftResult<Self> {
                    <Self as #s::Struct>::thrift_read_body(i, depth)
                }
                fn idl(idl: &mut #s::Idl) -> #s::TypeRef {
                    #idl
                }
            }
        };
    }
}

/// A C-like enum: a protobuf enum and a Thrift enum (`i32`), by discriminant.
fn c_like_enum(ident: &syn::Ident, attrs: &[syn::Attribute], e: &syn::DataEnum) -> syn::Result<TokenStream> {
    let mut values: Vec<i32> = Vec::new();
    let mut next = 0i32;
    for v in &e.variants {
        let value = match &v.discriminant {
            Some((_, expr)) => parse_discriminant(expr)?,
            None => next,
        };
        if values.contains(&value) {
            return Err(syn::Error::new_spanned(v, format!("enum value {value} is used twice")));
        }
        values.push(value);
        next = value.wrapping_add(1);
    }
    let s = quote!(::rpc_core::__private::schema);
    let type_name = ident.to_string();
    let variants: Vec<&syn::Ident> = e.variants.iter().map(|v| &v.ident).collect();
    let variant_names: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
    let absent = match values.iter().position(|&v| v == 0) {
        Some(i) => {
            let v = variants[i];
            quote!(::core::option::Option::Some(#ident::#v))
        }
        None => quote!(::core::option::Option::None),
    };
    let doc = doc_string(attrs);
    Ok(quote! {
        const _: () = {
            impl #ident {
                fn __rpc_value(&self) -> i32 {
                    match self { #(#ident::#variants => #values,)* }
                }
                fn __rpc_from_value(value: i32) -> ::core::option::Option<Self> {
                    match value {
                        #(#values => ::core::option::Option::Some(#ident::#variants),)*
                        _ => ::core::option::Option::None,
                    }
                }
            }

            impl #s::Single for #ident {
                const PROTO_WIRE: #s::WireType = #s::WireType::Varint;
                const PROTO_PACKED: bool = true;
                fn proto_value(&self, buf: &mut #s::BytesMut) {
                    #s::Single::proto_value(&self.__rpc_value(), buf)
                }
                fn proto_value_len(&self) -> usize {
                    #s::Single::proto_value_len(&self.__rpc_value())
                }
                fn proto_read(wire: #s::WireType, buf: &mut &[u8], depth: usize) -> #s::ProtoResult<Self> {
                    let value = <i32 as #s::Single>::proto_read(wire, buf, depth)?;
                    Self::__rpc_from_value(value)
                        .ok_or_else(|| #s::proto_error(::std::format!("{} has no value {}", #type_name, value)))
                }
                fn proto_is_default(&self) -> bool {
                    self.__rpc_value() == 0
                }
                fn thrift_read<P: #s::TInputProtocol + ?Sized>(i: &mut P, _: usize) -> #s::ThriftResult<Self> {
                    let value = i.read_i32()?;
                    Self::__rpc_from_value(value)
                        .ok_or_else(|| #s::thrift_error(::std::format!("{} has no value {}", #type_name, value)))
                }
            }

            impl #s::Schema for #ident {
                ::rpc_core::__private::__single_field_methods!();
                fn absent() -> ::core::option::Option<Self> {
                    #absent
                }
                const THRIFT_TYPE: #s::TType = #s::TType::I32;
                fn thrift_write<P: #s::TOutputProtocol + ?Sized>(&self, o: &mut P) -> #s::ThriftResult<()> {
                    o.write_i32(self.__rpc_value())
                }
                fn idl(idl: &mut #s::Idl) -> #s::TypeRef {
                    if idl.begin(#type_name) {
                        idl.define_enum(#type_name, #doc, ::std::vec![#((#variant_names, #values)),*]);
                    }
                    #s::TypeRef::named(#type_name)
                }
            }
        };
    })
}

fn parse_discriminant(expr: &syn::Expr) -> syn::Result<i32> {
    let (negative, lit) = match expr {
        syn::Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), expr, .. }) => (true, &**expr),
        other => (false, other),
    };
    if let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(n), .. }) = lit {
        if let Ok(v) = n.base10_parse::<i64>() {
            if let Ok(v) = i32::try_from(if negative { -v } else { v }) {
                return Ok(v);
            }
        }
    }
    Err(syn::Error::new_spanned(expr, "a #[message] enum's discriminant must be an i32 literal"))
}

/// `OutOfStock` → `out_of_stock`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The doc comment of an item, for its IDL definition.
pub(crate) fn doc_string(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|line| line.strip_prefix(' ').unwrap_or(&line).to_owned())
        .collect();
    lines.join("\n").trim().to_owned()
}

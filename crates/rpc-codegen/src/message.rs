//! `#[message]`: derives the encodings a type needs to travel in a call.

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(attr, "#[message] takes no arguments"));
    }
    let mut item: syn::DeriveInput = syn::parse2(item)?;
    let fields: Vec<&mut syn::Field> = match &mut item.data {
        syn::Data::Struct(s) => s.fields.iter_mut().collect(),
        syn::Data::Enum(e) => e.variants.iter_mut().flat_map(|v| v.fields.iter_mut()).collect(),
        syn::Data::Union(u) => {
            return Err(syn::Error::new_spanned(u.union_token, "#[message] supports structs and enums, not unions"))
        }
    };
    for field in fields {
        if is_byte_vec(&field.ty) {
            field.attrs.push(syn::parse_quote!(#[serde(with = "::rpc_core::__private::bytes_field")]));
        }
    }
    Ok(quote! {
        #[derive(::rpc_core::__private::serde::Serialize, ::rpc_core::__private::serde::Deserialize)]
        #[serde(crate = "::rpc_core::__private::serde")]
        #item
    })
}

/// `Vec<u8>` travels as a byte string, not as a list of numbers.
fn is_byte_vec(ty: &syn::Type) -> bool {
    let syn::Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else { return false };
    if last.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    matches!(args.args.first(), Some(syn::GenericArgument::Type(syn::Type::Path(t))) if t.path.is_ident("u8"))
}

//! `#[message]`: derives the encodings a type needs to travel in a call.

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(attr, "#[message] takes no arguments"));
    }
    let item: syn::DeriveInput = syn::parse2(item)?;
    if let syn::Data::Union(u) = &item.data {
        return Err(syn::Error::new_spanned(u.union_token, "#[message] supports structs and enums, not unions"));
    }
    Ok(quote! {
        #[derive(::rpc_core::__private::serde::Serialize, ::rpc_core::__private::serde::Deserialize)]
        #[serde(crate = "::rpc_core::__private::serde")]
        #item
    })
}

pub mod js;

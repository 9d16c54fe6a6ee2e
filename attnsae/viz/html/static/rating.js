(function(){
var D=JSON.parse(document.getElementById('sheet-data').textContent);
var KEY='attnsae-ratings:'+D.sae+':'+D.seed+':'+D.title;
var R={};try{R=JSON.parse(localStorage.getItem(KEY)||'{}')||{};}catch(e){R={};}
var items=[].slice.call(document.querySelectorAll('.item'));var cur=0;
function save(){try{localStorage.setItem(KEY,JSON.stringify(R));}catch(e){}}
function get(f){return R[f]||{verdict:null,note:''};}
function paint(){
  var k=0,m=0;
  items.forEach(function(it){var f=it.dataset.feature,r=get(f),st=it.querySelector('.st');
    it.querySelectorAll('button.v').forEach(function(b){b.classList.toggle('on',(b.dataset.v==='yes'&&r.verdict===true)||(b.dataset.v==='no'&&r.verdict===false));});
    st.className='st'+(r.verdict===true?' yes':r.verdict===false?' no':'');
    st.textContent=r.verdict===true?'interpretable':r.verdict===false?'not interpretable':'unrated';
    var inp=it.querySelector('input.note');if(document.activeElement!==inp)inp.value=r.note||'';
    if(r.verdict!==null&&r.verdict!==undefined){k++;if(r.verdict)m++;}});
  var n=items.length;
  document.getElementById('count').textContent='Rated '+k+' of '+n+' · interpretable '+m+(k?' ('+(100*m/k).toFixed(1)+'%)':'');
  document.getElementById('p-yes').style.width=(n?100*m/n:0)+'%';
  document.getElementById('p-no').style.width=(n?100*(k-m)/n:0)+'%';
}
function select(i,scroll){if(!items.length)return;cur=Math.max(0,Math.min(items.length-1,i));
  items.forEach(function(it,j){it.classList.toggle('cur',j===cur);});var it=items[cur];
  var fr=document.getElementById('frame'),href=it.dataset.href;
  if(fr.getAttribute('src')!==href)fr.setAttribute('src',href);
  document.getElementById('vh-title').textContent='Feature '+it.dataset.feature+' ('+(cur+1)+' of '+items.length+')';
  var a=document.getElementById('vh-open');a.setAttribute('href',href);
  if(scroll)it.scrollIntoView({block:'nearest'});}
function setVerdict(i,v){var it=items[i],f=it.dataset.feature,r=get(f);
  r.verdict=(r.verdict===v)?null:v;R[f]=r;save();paint();}
function nextUnrated(){for(var j=1;j<=items.length;j++){var i=(cur+j)%items.length;var r=get(items[i].dataset.feature);if(r.verdict===null||r.verdict===undefined)return i;}return Math.min(cur+1,items.length-1);}
items.forEach(function(it,i){
  it.addEventListener('click',function(e){if(e.target.tagName!=='INPUT')select(i,false);});
  it.querySelectorAll('button.v').forEach(function(b){b.addEventListener('click',function(e){e.stopPropagation();select(i,false);setVerdict(i,b.dataset.v==='yes');});});
  var inp=it.querySelector('input.note');
  inp.addEventListener('input',function(){var f=it.dataset.feature,r=get(f);r.note=inp.value;R[f]=r;save();});
  inp.addEventListener('focus',function(){select(i,false);});
});
document.addEventListener('keydown',function(e){
  if(e.target.tagName==='INPUT'||e.ctrlKey||e.metaKey||e.altKey)return;
  var k=e.key;
  if(k==='y'||k==='n'){var was=get(items[cur].dataset.feature).verdict;setVerdict(cur,k==='y');
    if(get(items[cur].dataset.feature).verdict!==null&&was!==get(items[cur].dataset.feature).verdict)select(nextUnrated(),true);e.preventDefault();}
  else if(k==='j'||k==='ArrowDown'){select(cur+1,true);e.preventDefault();}
  else if(k==='k'||k==='ArrowUp'){select(cur-1,true);e.preventDefault();}
  else if(k==='o'){window.open(items[cur].dataset.href,'_blank');}
});
function exportObj(){return {sae:D.sae,layer:D.layer,seed:D.seed,features:D.features.map(function(f){var r=get(String(f.feature));
  return {feature:f.feature,dashboard:f.dashboard,verdict:(r.verdict===true||r.verdict===false)?r.verdict:null,note:r.note||''};})};}
window.attnsaeExport=exportObj;
document.getElementById('export').addEventListener('click',function(){
  var blob=new Blob([JSON.stringify(exportObj(),null,1)+'\n'],{type:'application/json'});
  var a=document.createElement('a');a.href=URL.createObjectURL(blob);a.download=D.ratings_file;
  document.body.appendChild(a);a.click();setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);});
document.getElementById('clear').addEventListener('click',function(){
  if(confirm('Clear all ratings and notes on this sheet?')){R={};save();paint();}});
paint();select(0,false);
})();
